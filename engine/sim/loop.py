"""Event-driven simulation of one engine replica: the real Scheduler, SlotAllocator and admission
policy, with a cost model instead of a model.

The clock advances by the cost model's time for each step; when nothing can run it jumps to the
next arrival. Requests carry the user's max_tokens (all that admission sees); the simulator ends
each at its true length by sampling the stop token EOS as its last token, so the scheduler
finishes it through its ordinary stop-token path and its KV accounting stays exact. Every other
sampled token is FILLER.

With the prefix cache (on by default, as in the engine) the scheduler is the engine's: hits,
sharing of running prompts, LRU eviction, and a preempted request's recompute hitting its own
cached tokens. KV use is recorded as the scheduler's `num_used_slots` (slots running requests own
or pin) and, separately, the cached slots nobody pins (free to evict).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from raylight.engine.admission import PastFutureConfig, make_policy
from raylight.engine.config import SchedulerConfig
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.prefix_cache import PrefixCache
from raylight.engine.request import Request
from raylight.engine.sampling_params import SamplingParams
from raylight.engine.scheduler import Scheduler
from raylight.engine.sim.cost_model import CostModel, batch_features
from raylight.engine.sim.workloads import EOS, FILLER, Workload


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The replica: a pool of `num_kv_slots` usable tokens (1M is about Llama-3.1-8B on an H200;
    the engine's `num_kv_slots` counts the dummy slot 0 too, so it is this + 1)."""

    num_kv_slots: int = 1_000_000
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    prefix_cache: bool = True
    past_future: PastFutureConfig = field(default_factory=PastFutureConfig)


@dataclass(frozen=True)
class SimTrace:
    """What happened, per request (workload order) and per step. Times are simulated seconds;
    `max_gap` is the longest wait between two consecutive tokens of a request (0 for one), a
    preemption's wait and recompute included. `cached_tokens` is each request's prefix-cache hit
    at its first admission (`Request.num_cached_tokens`)."""

    policy: str
    arrival: np.ndarray  # [N]
    first_token: np.ndarray  # [N]
    finish: np.ndarray  # [N]
    max_gap: np.ndarray  # [N]
    output_len: np.ndarray  # [N] tokens generated
    preemptions: np.ndarray  # [N]
    prompt_len: np.ndarray  # [N]
    cached_tokens: np.ndarray  # [N]
    step_time: np.ndarray  # [S] seconds of each step
    step_kv_used: np.ndarray  # [S] Scheduler.num_used_slots during each step (owned or pinned)
    step_kv_cached: np.ndarray  # [S] cached slots no request pins (evictable) during each step
    num_kv_slots: int
    wall_s: float  # real seconds the simulation took


class _Recorder:
    """Per-request token timestamps, kept as running maxima (every gap is checked as it occurs)."""

    def __init__(self, n: int) -> None:
        self.first = np.full(n, np.nan)
        self.last = np.zeros(n)
        self.max_gap = np.zeros(n)
        self.finish = np.full(n, np.nan)
        self.num_out = np.zeros(n, dtype=np.int64)

    def tokens(self, idx: np.ndarray, now: float) -> None:
        fresh = np.isnan(self.first[idx])
        self.first[idx[fresh]] = now
        gaps = np.where(fresh, 0.0, now - self.last[idx])
        self.max_gap[idx] = np.maximum(self.max_gap[idx], gaps)
        self.last[idx] = now
        self.num_out[idx] += 1


def make_scheduler(workload: Workload, policy: str, config: SimConfig) -> Scheduler:
    """The one place the simulated replica is built: as EngineCore builds it."""
    sched_config = SchedulerConfig(
        config.max_num_seqs, config.max_num_batched_tokens, workload.max_model_len, policy
    )
    allocator = SlotAllocator(config.num_kv_slots + 1)  # + the dummy slot 0
    cache = PrefixCache(allocator) if config.prefix_cache else None
    return Scheduler(sched_config, allocator, make_policy(policy, config.past_future), cache)


def _request(workload: Workload, i: int) -> Request:
    cap = int(workload.max_tokens[i])
    return Request(
        request_id=str(i),
        prompt_token_ids=workload.prompt(i),
        params=SamplingParams(max_tokens=cap, temperature=0.0),
        max_tokens=cap,
        sample_seed=0,
        stop_token_ids=frozenset({EOS}),
        arrival_time=float(workload.arrival[i]),
    )


def simulate(workload: Workload, policy: str, config: SimConfig, cost: CostModel) -> SimTrace:
    """Runs every request of `workload` to its end under `policy`."""
    wall = time.perf_counter()
    sched = make_scheduler(workload, policy, config)
    n, arrival, true_len = len(workload), workload.arrival, workload.output_len
    rec = _Recorder(n)
    preemptions = np.zeros(n, dtype=np.int64)
    cached = np.zeros(n, dtype=np.int64)
    step_time: list[float] = []
    step_kv: list[int] = []
    step_cached: list[int] = []
    clock, nxt = 0.0, 0
    while nxt < n or sched.has_unfinished:
        while nxt < n and arrival[nxt] <= clock:
            sched.add(_request(workload, nxt))
            nxt += 1
        batch = sched.schedule()
        if batch is None:
            if nxt >= n:
                raise RuntimeError("requests left that the scheduler never runs")
            clock = float(arrival[nxt])
            continue
        dt = cost.step_time(*batch_features(batch))
        clock += dt
        step_time.append(dt)
        step_kv.append(sched.num_used_slots)
        step_cached.append(sched.cache.num_evictable_slots if sched.cache is not None else 0)
        sampling = batch.sampling_requests
        idx = np.fromiter((int(r.request_id) for r in sampling), np.int64, len(sampling))
        stop = rec.num_out[idx] + 1 >= true_len[idx]
        sched.update(batch, np.where(stop, EOS, FILLER).tolist())
        rec.tokens(idx, clock)
        done = idx[stop]
        rec.finish[done] = clock
        for i in np.flatnonzero(stop).tolist():
            preemptions[idx[i]] = sampling[i].num_preemptions
            cached[idx[i]] = sampling[i].num_cached_tokens
    return SimTrace(
        policy=policy,
        arrival=arrival,
        first_token=rec.first,
        finish=rec.finish,
        max_gap=rec.max_gap,
        output_len=rec.num_out,
        preemptions=preemptions,
        prompt_len=workload.prompt_len,
        cached_tokens=cached,
        step_time=np.asarray(step_time),
        step_kv_used=np.asarray(step_kv, dtype=np.int64),
        step_kv_cached=np.asarray(step_cached, dtype=np.int64),
        num_kv_slots=config.num_kv_slots,
        wall_s=time.perf_counter() - wall,
    )
