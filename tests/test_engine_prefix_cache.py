"""The prefix cache end to end on real (tiny, fp32) models: greedy tokens with the cache equal
those without it (whose equality with HF transformers tests/test_engine_hf.py checks), hits are
real, and tensor-parallel ranks apply the reused table entries too."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from raylight import LLM
from raylight.engine.config import EngineOptions
from raylight.engine.engine_core import EngineCore
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.llm import create_engine_core
from raylight.engine.prefix_cache import PrefixCache
from raylight.engine.prefix_cache_check import cached_prefixes, check_invariants
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import run_to_completion, shared_prefix_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def engine(model: Path, cache: bool, **overrides: object) -> EngineCore:
    opts = {"dtype": "float32", "max_model_len": 512, "max_num_seqs": 8, **overrides}
    return create_engine_core(
        model, EngineOptions(enable_prefix_caching=cache, **opts), progress=False
    )


def outputs(core: EngineCore, prompts: list[list[int]], arrivals: list[int] | None) -> list:
    return [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, arrivals)]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize(
    "budget, arrivals",
    [
        (4096, None),  # all admitted together: samples share only after their prefill
        (64, [0, 6, 12, 18, 24, 30, 36, 42]),  # later prompts hit earlier ones
        (13, [0, 9, 10, 30, 31, 45, 60, 61]),  # chunked prefill, and hits that end mid-chunk
    ],
)
def test_greedy_tokens_equal_without_cache(
    tiny_models: dict[str, Path], arch: str, budget: int, arrivals: list[int] | None
) -> None:
    base = engine(tiny_models[arch], cache=False, max_num_batched_tokens=budget)
    prompts = shared_prefix_prompts(base.config.arch.vocab_size)
    expected = outputs(base, prompts, arrivals)
    assert base.scheduler.allocator.num_used == 0  # no cache: nothing kept
    core = engine(tiny_models[arch], cache=True, max_num_batched_tokens=budget)
    reqs = run_to_completion(core, prompts, GREEDY, arrivals)
    assert [r.output_token_ids for r in reqs] == expected
    if arrivals is not None:
        hits = [r.num_cached_tokens for r in reqs]
        assert hits[1] >= 70 and hits[5] == 69 and hits[6] == len(prompts[6]) - 1, hits
    cache = core.scheduler.cache
    assert cache is not None and cache.num_cached_slots > 0
    check_invariants(cache)


@pytest.mark.parametrize("budget", [4096, 11])
def test_multi_turn_conversation(tiny_models: dict[str, Path], budget: int) -> None:
    """Each turn's prompt is the conversation so far plus new tokens: it hits the whole history
    but its last generated token, and generates what a cacheless engine generates."""
    base = engine(tiny_models["qwen2"], cache=False, max_num_batched_tokens=budget)
    core = engine(tiny_models["qwen2"], cache=True, max_num_batched_tokens=budget)
    rng = random.Random(3)
    prompt = [rng.randrange(base.config.arch.vocab_size) for _ in range(25)]
    history = 0
    for turn in range(4):
        expected = outputs(base, [prompt], None)[0]
        req = run_to_completion(core, [prompt], GREEDY)[0]
        assert req.output_token_ids == expected, f"turn {turn}"
        assert req.num_cached_tokens == max(history - 1, 0)
        history = req.num_tokens
        new = [rng.randrange(base.config.arch.vocab_size) for _ in range(rng.randint(1, 9))]
        prompt = prompt + req.output_token_ids + new


def test_small_pool_evicts_and_preempts_with_same_output(tiny_models: dict[str, Path]) -> None:
    """A pool that cannot hold the cache and the running requests: eviction and preemption (the
    aggressive policy) under a cache keep the tokens."""
    opts = {"max_model_len": 256, "num_kv_slots": 257, "admission_policy": "aggressive"}
    base = engine(tiny_models["llama"], cache=False, **opts)
    prompts = shared_prefix_prompts(base.config.arch.vocab_size, seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    arrivals = [0, 0, 0, 2, 2, 3, 3, 40]
    expected = [r.output_token_ids for r in run_to_completion(base, prompts, params, arrivals)]
    core = engine(tiny_models["llama"], cache=True, **opts)
    reqs = run_to_completion(core, prompts, params, arrivals)
    assert [r.output_token_ids for r in reqs] == expected
    assert core.scheduler.num_preemptions > 0
    assert sum(r.num_cached_tokens for r in reqs) > 0


def test_offline_api_reports_cached_tokens(tiny_models: dict[str, Path]) -> None:
    llm = LLM(tiny_models["llama"], max_model_len=256, progress=False)
    ids = list(range(5, 45))
    first = llm.generate([ids], GREEDY)[0]
    again = llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=12, n=2))[0]
    assert first.num_cached_tokens == 0
    assert again.num_cached_tokens == len(ids) - 1
    assert again.outputs[0].token_ids[:12] == first.outputs[0].token_ids[:12]
    off = LLM(tiny_models["llama"], max_model_len=256, progress=False, enable_prefix_caching=False)
    out = off.generate([ids], GREEDY)[0]
    assert out.num_cached_tokens == 0 and out.outputs[0].token_ids == first.outputs[0].token_ids
    assert off.core.scheduler.cache is None and off.core.scheduler.allocator.num_used == 0


def test_partial_eviction_trims_the_lru_leaf_tail() -> None:
    """`evict(n, partial=True)` frees exactly n slots from the tail of the least recently used
    leaf; its head still hits."""
    cache = PrefixCache(SlotAllocator(64))
    for seq in ([1, 2, 3, 4, 5, 6], [7, 8, 9]):
        m = cache.match_prefix(seq)
        cache.insert(seq, np.concatenate([m.slots, cache.allocator.alloc(len(seq))]))
    assert cache.evict(2, partial=True) == 2
    check_invariants(cache)
    assert len(cache.match_prefix([1, 2, 3, 4, 5, 6]).slots) == 4
    assert len(cache.match_prefix([7, 8, 9]).slots) == 3
    assert cache.evict(100, partial=True) == 7 and cached_prefixes(cache) == {}
    assert cache.allocator.num_used == 0
