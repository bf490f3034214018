"""Async scheduling (overlap): every request's stream of tokens, logprobs, finish reasons and
cache hits equals the synchronous engine's, through stops, length limits, chunked prefill,
prefix-cache sharing, seeded sampling, penalties (which turn overlap off for their steps),
preemption (where a scheduled-ahead step gives way to a synchronous one) and aborts; and no KV
slot leaks. The synchronous engine is checked against HF transformers in test_engine_hf.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raylight.engine.config import EngineOptions
from raylight.engine.engine_core import EngineCore
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import assert_pool_empty, shared_prefix_prompts


@dataclass
class Stream:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[object] = field(default_factory=list)
    finish: str | None = None
    cached: int | None = None


def assert_same(got: list[Stream], expected: list[Stream]) -> None:
    """Tokens, finish reasons and cache hits exactly; logprobs to float32 rounding, since the
    scheduled-ahead engine admits a step later after a finish, so batches differ."""
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert (g.tokens, g.finish, g.cached) == (e.tokens, e.finish, e.cached), i
        assert len(g.logprobs) == len(e.logprobs), i
        for (g_lp, g_top), (e_lp, e_top) in zip(g.logprobs, e.logprobs):  # type: ignore[misc]
            assert g_lp == pytest.approx(e_lp, abs=1e-4), i
            assert [t for t, _ in g_top] == [t for t, _ in e_top], i
            assert [lp for _, lp in g_top] == pytest.approx([lp for _, lp in e_top], abs=1e-4)


def engine(model: Path, async_scheduling: bool, **overrides: object) -> EngineCore:
    opts = {"dtype": "float32", "max_model_len": 256, "max_num_seqs": 8, "device": "cpu"}
    opts.update(overrides)
    options = EngineOptions(async_scheduling=async_scheduling, **opts)  # type: ignore[arg-type]
    return create_engine_core(model, options, progress=False)


def drive(
    core: EngineCore,
    work: Work,
    abort_at: dict[int, int] | None = None,
) -> list[Stream]:
    """Adds request i at step work[i][0], aborts request i at step abort_at[i]; steps to the end."""
    reqs = [core.make_request(f"r{i}", p, params) for i, (_, p, params) in enumerate(work)]
    streams = [Stream() for _ in work]
    aborts = abort_at or {}
    step = 0
    while step <= max(at for at, _, _ in work) or core.has_unfinished:
        for i, (at, _, _) in enumerate(work):
            if at == step:
                core.add(reqs[i])
        for i, at in aborts.items():
            if at == step:
                core.abort(f"r{i}")
        for d in core.step():
            s = streams[int(d.request_id[1:])]
            s.tokens += d.new_token_ids
            s.logprobs += d.new_logprobs or []
            s.finish = d.finish_reason
            if d.num_cached_tokens is not None:
                s.cached = d.num_cached_tokens
        step += 1
        assert step < 2000, "the engine stopped making progress"
    assert_pool_empty(core)
    return streams


Work = list[tuple[int, list[int], SamplingParams]]  # (arrival step, prompt, params)


def mixed_work(vocab: int, stops: list[int] | None = None) -> Work:
    """Shared-prefix prompts arriving over time: greedy with stop ids and different max_tokens,
    seeded top-p / top-k sampling with logprobs, and min_tokens."""
    prompts = shared_prefix_prompts(vocab)
    arrivals = [0, 0, 3, 5, 9, 9, 14, 20]
    work = []
    for i, (prompt, at) in enumerate(zip(prompts, arrivals)):
        stop = [] if stops is None else [stops[i]]
        if i % 3 == 0:
            params = SamplingParams(temperature=0.0, max_tokens=10 + 3 * i, stop_token_ids=stop)
        elif i % 3 == 1:
            params = SamplingParams(temperature=0.9, top_p=0.8, top_k=20, seed=i, max_tokens=18,
                                    logprobs=2, stop_token_ids=stop)  # fmt: skip
        else:
            params = SamplingParams(temperature=0.7, min_p=0.05, seed=i, max_tokens=15,
                                    min_tokens=4, stop_token_ids=stop)  # fmt: skip
        work.append((at, prompt, params))
    return work


def stop_ids(tiny: Path, **overrides: object) -> list[int]:
    """For request i, a token its unstopped run samples mid-way, so that it stops early."""
    base = engine(tiny, False, **overrides)
    streams = drive(base, mixed_work(base.config.arch.vocab_size))
    return [s.tokens[min(2 + i, len(s.tokens) - 1)] for i, s in enumerate(streams)]


@pytest.mark.parametrize("budget", [4096, 13])
def test_streams_equal_synchronous(tiny_models: dict[str, Path], budget: int) -> None:
    tiny = tiny_models["llama"]
    stops = stop_ids(tiny)
    sync = engine(tiny, False, max_num_batched_tokens=budget)
    work = mixed_work(sync.config.arch.vocab_size, stops)
    expected = drive(sync, work)
    assert sum(s.finish == "stop" for s in expected) >= 4, "the stop ids must end requests early"
    core = engine(tiny, True, max_num_batched_tokens=budget)
    assert_same(drive(core, work), expected)
    assert core.num_scheduled_ahead > 20
    assert sync.num_scheduled_ahead == 0


def test_length_limits_and_penalties(tiny_models: dict[str, Path]) -> None:
    """Requests that reach max_model_len or max_tokens exactly; penalties need every earlier
    token, so no step is scheduled ahead of one that samples with them."""
    tiny = tiny_models["qwen3"]
    prompts = shared_prefix_prompts(500)
    long = SamplingParams(temperature=0.0, max_tokens=None)  # runs to max_model_len (96)
    work = [(0, prompts[0], long), (2, prompts[1], SamplingParams(temperature=0.0, max_tokens=1)),
            (4, prompts[7], SamplingParams(temperature=0.0, max_tokens=30))]  # fmt: skip
    expected = drive(engine(tiny, False, max_model_len=96), work)
    core = engine(tiny, True, max_model_len=96)
    assert_same(drive(core, work), expected)
    assert [s.finish for s in expected] == ["length"] * 3 and len(expected[0].tokens) == 25
    assert core.num_scheduled_ahead > 10

    penalized = SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.3,
                               frequency_penalty=0.4)  # fmt: skip
    plain = SamplingParams(temperature=0.0, max_tokens=40)
    # The second penalized request joins a batch of decodes scheduled ahead.
    work = [(0, prompts[7], penalized), (0, prompts[0][:30], plain), (20, prompts[4], penalized)]
    expected = drive(engine(tiny, False, max_model_len=96), work)
    core = engine(tiny, True, max_model_len=96)
    assert_same(drive(core, work), expected)
    # Steps are scheduled ahead only while no penalized request samples: between the first
    # one's end (step 12) and the second one's admission (step 20), and after it ends.
    assert 0 < core.num_scheduled_ahead <= 40 - 12 - 12 + 2


def test_preemption_and_aborts(tiny_models: dict[str, Path]) -> None:
    """A pool too small for the batch: steps that would preempt run synchronously instead.
    Aborted requests free everything, also while a step scheduled ahead holds them."""
    tiny = tiny_models["llama"]
    prompts = shared_prefix_prompts(500, seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    work = [(i, p, params) for i, p in enumerate(prompts)]
    small = {"num_kv_slots": 300, "admission_policy": "aggressive", "max_num_batched_tokens": 64}
    sync = engine(tiny, False, **small)
    expected = drive(sync, work)
    assert sync.scheduler.num_preemptions > 0
    core = engine(tiny, True, **small)
    assert_same(drive(core, work), expected)
    assert core.scheduler.num_preemptions > 0 and core.num_scheduled_ahead > 20

    aborts = {1: 6, 4: 12, 6: 7}  # mid-prefill, mid-decode, right after admission
    sync = engine(tiny, False, **small)
    expected = drive(sync, work, aborts)
    core = engine(tiny, True, **small)
    got = drive(core, work, aborts)
    for i, (g, e) in enumerate(zip(got, expected)):
        if i in aborts:  # what it streamed before the abort is the synchronous stream's start
            n = min(len(g.tokens), len(e.tokens))
            assert g.finish is None and len(g.tokens) <= len(e.tokens) + 1
            assert g.tokens[:n] == e.tokens[:n]
        else:
            assert_same([g], [e])


def test_llm_api_with_async_scheduling(tiny_models: dict[str, Path]) -> None:
    from raylight import LLM

    prompts = shared_prefix_prompts(500, seed=5)[:4]
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=9, n=2, logprobs=1)
    runs = []
    for on in (False, True):
        llm = LLM(model=str(tiny_models["mistral"]), dtype="float32", device="cpu",
                  max_model_len=256, async_scheduling=on)  # fmt: skip
        outs = llm.generate(prompts, params)
        runs.append([[c.token_ids for c in o.outputs] for o in outs])
    assert runs[0] == runs[1]


def test_async_scheduling_resolves_auto(tiny_models: dict[str, Path]) -> None:
    from raylight.engine.config import resolve_engine_config
    from raylight.engine.model_config import load_arch_config

    model = tiny_models["llama"]
    arch = load_arch_config(model)
    on_cpu = resolve_engine_config(model, arch, EngineOptions(device="cpu"))
    assert not on_cpu.async_scheduling  # auto: only with CUDA
    options = EngineOptions(device="cpu", tensor_parallel_size=2, async_scheduling=True)
    assert resolve_engine_config(model, arch, options).async_scheduling
