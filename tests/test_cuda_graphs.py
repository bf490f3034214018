"""CUDA-graph decode, the Triton backend and KV sizing on a real GPU (gpu marker: skipped on
the CPU machine). Run with TRITON_INTERPRET=0, e.g. `benchmarks/device_check.sh`."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
import torch

from raylight.engine.config import EngineOptions
from raylight.engine.engine_core import EngineCore
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import assert_pool_empty, run_to_completion, shared_prefix_prompts

pytestmark = pytest.mark.gpu

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(autouse=True)
def _free_gpu_memory() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gc.collect()
    torch.cuda.empty_cache()


def _core(model: Path, dtype: str = "float32", **opts: object) -> EngineCore:
    options = EngineOptions(dtype=dtype, device="cuda", max_model_len=512, num_kv_slots=8192,
                            max_num_seqs=16, **opts)  # fmt: skip
    return create_engine_core(model, options, progress=False)


def _prompts(n: int, seed: int = 0, vocab: int = 256) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randrange(1, 60))] for _ in range(n)]


@pytest.mark.parametrize("n", [1, 3, 8, 11, 16])  # exact buckets (1, 8, 16) and padded (3, 11)
def test_graph_decode_matches_eager_fp32(tiny_models: dict[str, Path], n: int) -> None:
    prompts = _prompts(n, seed=n)
    arrivals = [i % 3 for i in range(n)]  # batch sizes change while requests join
    outs = []
    for eager in (True, False):
        core = _core(tiny_models["llama"], enforce_eager=eager)
        assert (core.runner.graphs is None) == eager
        reqs = run_to_completion(core, prompts, GREEDY, arrivals)
        outs.append([r.output_token_ids for r in reqs])
        if not eager:
            assert core.runner.graphs is not None and core.runner.graphs.num_replays > 10
    assert outs[1] == outs[0]


def test_decode_batches_above_the_largest_bucket_run_eagerly(tiny_models: dict[str, Path]) -> None:
    prompts = _prompts(10, seed=5)
    arrivals = list(range(len(prompts)))  # staggered: the run's tail decodes <= 4 requests
    want = [r.output_token_ids for r in run_to_completion(
        _core(tiny_models["qwen2"], enforce_eager=True), prompts, GREEDY, arrivals)]  # fmt: skip
    core = _core(tiny_models["qwen2"], cuda_graph_max_batch=4)
    assert core.runner.graphs is not None and core.runner.graphs.sizes == [1, 2, 4]
    got = [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, arrivals)]
    assert got == want
    assert core.runner.graphs.num_replays > 0  # the tail of the run has <= 4 requests left


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_graph_logits_close_to_eager_bf16(tiny_models: dict[str, Path], arch: str) -> None:
    """Teacher-forced: every decode batch runs through its graph and eagerly; logits agree to
    bf16 precision and greedy picks agree almost everywhere (padded lanes never leak)."""
    core = _core(tiny_models[arch], dtype="bfloat16")
    assert core.runner.graphs is not None
    for i, p in enumerate(_prompts(11, seed=7)):
        core.add(core.make_request(str(i), p, GREEDY))
    agree = total = 0
    while core.has_unfinished:
        batch = core.scheduler.schedule()
        assert batch is not None
        graphed = core.runner.graphs.can_run(batch)
        logits = core.runner.forward(batch).float().clone()
        if graphed:
            eager = core.runner.forward(batch, eager=True).float()
            assert torch.isfinite(logits).all()
            scale = eager.abs().max().item()
            assert (logits - eager).abs().max().item() <= 0.05 * scale + 0.05
            agree += int((logits.argmax(-1) == eager.argmax(-1)).sum())
            total += logits.shape[0]
        for d in core.scheduler.update(batch, logits.argmax(-1).tolist(), None):
            if d.finish_reason is not None:
                del core.requests[d.request_id]
    assert total > 100 and agree >= 0.95 * total
    assert_pool_empty(core)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_triton_path_matches_torch_path_fp32(tiny_models: dict[str, Path], arch: str) -> None:
    """Triton attention + fused layers + graphs equal the torch path (itself equal to HF) on
    chunked, mixed and prefix-cache-hit batches."""
    prompts = _prompts(6, seed=3) + shared_prefix_prompts(256, seed=3)
    arrivals = [0, 0, 1, 2, 3, 5] + [6 + 3 * i for i in range(8)]
    outs = []
    for backend, fused, eager in (("torch", False, True), ("triton", True, False)):
        core = _core(tiny_models[arch], attention_backend=backend, fused_kernels=fused,
                     enforce_eager=eager, max_num_batched_tokens=48)  # fmt: skip
        reqs = run_to_completion(core, prompts, GREEDY, arrivals)
        outs.append([r.output_token_ids for r in reqs])
    assert outs[1] == outs[0]
    assert sum(r.num_cached_tokens for r in reqs) > 100
    assert core.runner.prefill_graphs is not None and core.runner.prefill_graphs.num_replays > 5


def test_auto_resolves_to_the_fast_path_on_cuda(tiny_models: dict[str, Path]) -> None:
    core = _core(tiny_models["llama"])
    assert core.config.attention_backend == "triton" and core.config.fused_kernels
    assert core.runner.graphs is not None and core.runner.graphs.max_batch == 16


def test_kv_pool_sized_from_free_memory_after_graphs(tiny_models: dict[str, Path]) -> None:
    options = EngineOptions(dtype="bfloat16", device="cuda", max_model_len=1024,
                            gpu_memory_utilization=0.3)  # fmt: skip
    core = create_engine_core(tiny_models["llama"], options, progress=False)
    runner = core.runner
    prof = runner.memory_profile
    assert prof.kv_bytes > 0 and prof.prefill_peak_bytes > 0
    assert runner.num_slots > 10 * 1024
    assert runner.graphs is not None and runner.graphs.max_batch == 256
    assert runner.prefill_graphs is not None and runner.prefill_graphs.max_tokens == 2048
    graph_bytes = runner.graphs.pool_bytes + runner.prefill_graphs.pool_bytes
    assert 0 <= graph_bytes <= prof.graph_reserve_bytes
    free, total = torch.cuda.mem_get_info()
    assert free > 0.5 * total  # 0.3 of the GPU was the budget: the rest is still free
    reqs = run_to_completion(core, _prompts(20, seed=9), GREEDY)
    assert all(len(r.output_token_ids) == GREEDY.max_tokens for r in reqs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_async_scheduling_matches_synchronous(tiny_models: dict[str, Path], dtype: str) -> None:
    """Scheduled-ahead steps on the GPU: pending input ids read on the device, in graph
    replays (decode) and eager mixed steps, equal the synchronous engine's streams."""
    from .test_async_scheduling import assert_same, drive, mixed_work, stop_ids

    tiny = tiny_models["llama"]
    opts = {"device": "cuda", "dtype": dtype, "num_kv_slots": 8192}
    stops = stop_ids(tiny, **opts)
    streams = []
    for on in (False, True):
        core = _core(tiny, dtype=dtype, async_scheduling=on)
        streams.append(drive(core, mixed_work(core.config.arch.vocab_size, stops)))
        assert (core.num_scheduled_ahead > 20) == on
        assert core.runner.graphs is not None and core.runner.graphs.num_replays > 10
    if dtype == "float32":
        assert_same(streams[1], streams[0])
    else:  # bf16 rounding depends on the batch: compare the tokens of the first steps only
        for got, want in zip(streams[1], streams[0]):
            assert got.tokens[:3] == want.tokens[:3]


def test_fp8_pool_on_gpu_matches_hf_with_rounded_cache(tiny_models: dict[str, Path]) -> None:
    """The Triton kernels with an FP8 pool (the GPU rounds into e4m3 as torch does) against HF
    with an e4m3-rounded cache; and, sized from free memory, twice the slots of a bf16 pool."""
    from transformers import AutoModelForCausalLM

    from .test_engine_fp8_kv import NEW_TOKENS, hf_fp8_greedy
    from .test_engine_hf import make_prompts

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    prompts = make_prompts(model.config.vocab_size)
    expected = [hf_fp8_greedy(model.eval(), p)[0] for p in prompts]
    del model
    core = _core(tiny_models["llama"], kv_cache_dtype="fp8")
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    assert [r.output_token_ids for r in run_to_completion(core, prompts, params)] == expected
    assert core.runner.graphs is not None and core.runner.graphs.num_replays > 10
    del core
    gc.collect()
    torch.cuda.empty_cache()
    slots = {}
    for kv in ("auto", "fp8"):
        opts = EngineOptions(dtype="bfloat16", device="cuda", max_model_len=512,
                             gpu_memory_utilization=0.3, kv_cache_dtype=kv)  # fmt: skip
        sized = create_engine_core(tiny_models["llama"], opts, progress=False)
        slots[kv] = sized.runner.num_slots
        del sized
        gc.collect()
        torch.cuda.empty_cache()
    assert 1.9 < slots["fp8"] / slots["auto"] < 2.1, slots


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pdl_matches_plain_launches(tiny_models: dict[str, Path], dtype: str) -> None:
    """Programmatic dependent launch (engine option `pdl`) in graphs and eager steps: greedy
    output identical to the same engine without it (the kernels compute the same values; only
    when each may start changes), skinny linear layers included."""
    prompts = _prompts(8, seed=11)
    arrivals = [i % 3 for i in range(len(prompts))]
    outs = []
    for pdl in (False, True):
        core = _core(tiny_models["llama"], dtype=dtype, pdl=pdl, skinny_linear=True)
        assert core.config.pdl == pdl and core.runner.backend.pdl == pdl
        reqs = run_to_completion(core, prompts, GREEDY, arrivals)
        outs.append([r.output_token_ids for r in reqs])
        assert core.runner.graphs is not None and core.runner.graphs.num_replays > 10
        assert_pool_empty(core)
    assert outs[1] == outs[0]


def test_prefill_graphs_match_eager_steps(tiny_models: dict[str, Path]) -> None:
    """Prefill and mixed steps replayed from prefill graphs (chunked prompts, prefix-cache hits,
    decodes riding along, scheduled ahead): greedy output identical to running them eagerly,
    and no slot leaks."""
    prompts = _prompts(6, seed=13) + shared_prefix_prompts(256, seed=13)
    arrivals = [0, 0, 1, 2, 3, 5] + [6 + 2 * i for i in range(8)]
    outs = []
    for max_tokens in (0, 2048):
        core = _core(tiny_models["qwen3"], prefill_graph_max_tokens=max_tokens,
                     max_num_batched_tokens=40)  # fmt: skip
        assert (core.runner.prefill_graphs is None) == (max_tokens == 0)
        reqs = run_to_completion(core, prompts, GREEDY, arrivals)
        outs.append([r.output_token_ids for r in reqs])
        assert_pool_empty(core)
    assert outs[1] == outs[0]
    graphs = core.runner.prefill_graphs
    assert graphs is not None and graphs.max_tokens == 40 and graphs.num_replays > 10
    assert sum(r.num_cached_tokens for r in reqs) > 100


def test_prefill_graph_logits_close_to_eager_bf16(tiny_models: dict[str, Path]) -> None:
    """Teacher-forced: every prefill or mixed batch runs through its graph and eagerly; the
    logits agree to bf16 precision (padding tokens and requests never leak into real rows)."""
    core = _core(tiny_models["llama"], dtype="bfloat16", max_num_batched_tokens=64)
    graphs = core.runner.prefill_graphs
    assert graphs is not None
    pending = list(enumerate(_prompts(12, seed=17)))
    checked = 0
    while core.has_unfinished or pending:
        for _ in range(2):  # two arrivals per step: prefills keep mixing with decodes
            if pending:
                i, p = pending.pop()
                core.add(core.make_request(str(i), p, GREEDY))
        batch = core.scheduler.schedule()
        assert batch is not None
        graphed = graphs.can_run(batch)
        logits = core.runner.forward(batch)
        logits = None if logits is None else logits.float().clone()
        if graphed and logits is not None:
            eager = core.runner.forward(batch, eager=True).float()
            assert torch.isfinite(logits).all()
            scale = eager.abs().max().item()
            assert (logits - eager).abs().max().item() <= 0.05 * scale + 0.05
            checked += 1
        ids = [] if logits is None else logits.argmax(-1).tolist()
        for d in core.scheduler.update(batch, ids, None):
            if d.finish_reason is not None:
                del core.requests[d.request_id]
    assert checked >= 6
    assert_pool_empty(core)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_decode_layers_match_unfused(tiny_models: dict[str, Path], dtype: str) -> None:
    """fuse_decode_layers in decode graphs of <= 8 rows (compiled kernels, not the
    interpreter): greedy output equal to the unfused kernels' in fp32; in bf16 the first
    tokens (later ones may drift with the changed rounding)."""
    prompts = _prompts(8, seed=19)
    arrivals = [i % 3 for i in range(len(prompts))]
    outs = []
    for fuse in (False, True):
        core = _core(tiny_models["qwen2"], dtype=dtype, skinny_linear=True,
                     fuse_decode_layers=fuse)  # fmt: skip
        assert core.runner.model.fused_decode == fuse
        reqs = run_to_completion(core, prompts, GREEDY, arrivals)
        outs.append([r.output_token_ids for r in reqs])
        assert core.runner.graphs is not None and core.runner.graphs.num_replays > 10
        assert_pool_empty(core)
    if dtype == "float32":
        assert outs[1] == outs[0]
    else:
        assert all(a[:3] == b[:3] for a, b in zip(outs[1], outs[0]))
