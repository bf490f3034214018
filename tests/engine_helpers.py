"""Helpers for engine tests: run requests to completion, check that no KV slot leaked."""

from __future__ import annotations

import random
from collections.abc import Sequence

from raylight.engine.engine_core import EngineCore
from raylight.engine.prefix_cache_check import check_invariants
from raylight.engine.request import PENDING, Request
from raylight.engine.sampling_params import SamplingParams


def assert_pool_empty(core: EngineCore) -> None:
    sched = core.scheduler
    assert not sched.has_unfinished
    # Slots still in use belong to the prefix cache, and nothing pins them (all evictable).
    cached = 0 if sched.cache is None else sched.cache.num_cached_slots
    assert sched.allocator.num_used == cached, "KV slots leaked"
    assert sched.num_free_slots == sched.allocator.capacity, "cached slots still locked"
    if sched.cache is not None:
        check_invariants(sched.cache)
    assert sched.table.num_free_rows == core.config.scheduler.max_num_seqs
    assert not core.requests


def run_to_completion(
    core: EngineCore,
    prompts: list[list[int]],
    params: SamplingParams,
    arrival_steps: list[int] | None = None,
) -> list[Request]:
    """Adds prompt i at step arrival_steps[i] (all at step 0 by default) and steps until done."""
    arrival_steps = arrival_steps or [0] * len(prompts)
    reqs = [core.make_request(f"r{i}", p, params) for i, p in enumerate(prompts)]
    step = 0
    while step <= max(arrival_steps) or core.has_unfinished:
        for req, at in zip(reqs, arrival_steps):
            if at == step:
                core.add(req)
        core.step()
        step += 1
    assert_pool_empty(core)
    return reqs


def shared_prefix_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    """Eight prompts over one 70-token system prefix: four extensions, a shorter cut with a
    different tail, the prefix itself, an exact repeat of the second, and one unrelated prompt."""
    rng = random.Random(seed)
    system = [rng.randrange(vocab) for _ in range(70)]
    tail = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 9, 23, 40)]
    prompts = [system + t for t in tail]
    prompts += [system[:37] + tail[2], list(system), list(prompts[1])]
    prompts.append([rng.randrange(vocab) for _ in range(50)])
    return prompts


def make_sampling_request(
    params: SamplingParams,
    seed: int = 0,
    prompt: Sequence[int] = (1, 2),
    output: Sequence[int] = (),
    stop: Sequence[int] = (),
) -> Request:
    """A request as the sampler sees it mid-generation: `output` tokens already produced, then
    the PENDING token being sampled (what `Scheduler.schedule` appends)."""
    req = Request(
        request_id=f"r{seed}",
        prompt_token_ids=list(prompt),
        params=params,
        max_tokens=64,
        sample_seed=seed,
        stop_token_ids=frozenset(stop),
        output_token_ids=[*output, PENDING],
    )
    req.num_pending = 1
    return req
