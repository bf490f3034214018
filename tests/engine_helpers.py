"""Helpers for engine tests: run requests to completion, check that no KV slot leaked."""

from __future__ import annotations

from collections.abc import Sequence

from raylight.engine.engine_core import EngineCore
from raylight.engine.request import Request
from raylight.engine.sampling_params import SamplingParams


def assert_pool_empty(core: EngineCore) -> None:
    sched = core.scheduler
    assert not sched.has_unfinished
    assert sched.allocator.num_free == sched.allocator.capacity, "KV slots leaked"
    assert len(sched.allocator.owned()) == 0
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


def make_sampling_request(
    params: SamplingParams,
    seed: int = 0,
    prompt: Sequence[int] = (1, 2),
    output: Sequence[int] = (),
    stop: Sequence[int] = (),
) -> Request:
    """A request as the sampler sees it mid-generation (`output` tokens already produced)."""
    return Request(
        request_id=f"r{seed}",
        prompt_token_ids=list(prompt),
        params=params,
        max_tokens=64,
        sample_seed=seed,
        stop_token_ids=frozenset(stop),
        output_token_ids=list(output),
    )
