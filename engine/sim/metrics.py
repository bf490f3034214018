"""Service-level numbers from a simulation trace: goodput under an SLA, throughput, preemptions,
KV utilization, prefix-cache hit rates."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from raylight.engine.prefix_cache import block_aligned
from raylight.engine.sim.loop import SimTrace

BLOCK_SIZE = 16  # the block-level cache the token-level hit rate is compared with (vLLM's)


@dataclass(frozen=True, slots=True)
class Sla:
    """A request meets the SLA if its first token comes within `ttft_s` of its arrival and no
    two consecutive tokens are more than `itl_s` apart (every gap, not the mean)."""

    ttft_s: float
    itl_s: float


PAPER_SLA = Sla(ttft_s=10.0, itl_s=1.5)  # the Past-Future paper's
TIGHT_SLA = Sla(ttft_s=2.0, itl_s=0.5)  # interactive chat: ours


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """Goodput = requests meeting the SLA / makespan, throughput = requests (or output tokens) /
    makespan, where makespan runs from the first arrival to the last finish: the same window for
    every policy, and a policy that falls behind pays for its backlog.

    Hit rates are cached prompt tokens / prompt tokens at each request's first admission.
    `prefix_hit_rate_block16` rounds each request's hit down to whole 16-token blocks
    (`block_aligned`): what a vLLM-style block cache holding the same tokens would hit. It
    ignores that the two caches would evict differently (a block cache frees whole blocks), so
    it is an estimate of the granularity loss only."""

    rate: float  # offered requests per second (the workload's nominal rate)
    num_requests: int
    goodput: float  # requests/s meeting PAPER_SLA
    goodput_tight: float  # requests/s meeting TIGHT_SLA
    sla_attainment: float  # fraction of requests meeting PAPER_SLA
    sla_attainment_tight: float
    throughput_requests_per_s: float
    throughput_output_tokens_per_s: float
    preemptions: int
    preempted_requests: int
    kv_util_mean: float  # over steps: Scheduler.num_used_slots (owned or pinned) / pool size
    kv_util_p99: float
    kv_cached_evictable_mean: float  # over steps: cached slots no request pins / pool size
    prefix_hit_rate: float
    prefix_hit_rate_block16: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    max_itl_p99_s: float  # p99 over requests of each request's longest token gap
    # Why requests missed PAPER_SLA (counts of requests): a late first token only, a token gap
    # over the limit only, both; and how many of the gap misses were preempted (a preemption's
    # wait and recompute sit inside one gap) as against gaps from long steps alone.
    missed_ttft_only: int
    missed_gap_only: int
    missed_both: int
    missed_gap_preempted: int
    kv_full_steps: float  # fraction of steps with >= 95% of the pool owned or pinned
    mean_step_ms: float
    num_steps: int
    makespan_s: float
    sim_wall_s: float

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["throughput"] = {
            "requests_per_s": out.pop("throughput_requests_per_s"),
            "output_tokens_per_s": out.pop("throughput_output_tokens_per_s"),
        }
        return out


def meets(trace: SimTrace, sla: Sla) -> np.ndarray:
    """bool [N]: which requests finished within the SLA."""
    ttft = trace.first_token - trace.arrival
    return ~np.isnan(trace.finish) & (ttft <= sla.ttft_s) & (trace.max_gap <= sla.itl_s)


def miss_reasons(trace: SimTrace, sla: Sla) -> dict[str, int]:
    """Counts of requests missing `sla` by cause (see PolicyReport's `missed_*`)."""
    late = ~(trace.first_token - trace.arrival <= sla.ttft_s)  # NaN (never started) is late
    gap = trace.max_gap > sla.itl_s
    return {
        "missed_ttft_only": int((late & ~gap).sum()),
        "missed_gap_only": int((gap & ~late).sum()),
        "missed_both": int((late & gap).sum()),
        "missed_gap_preempted": int((gap & (trace.preemptions > 0)).sum()),
    }


def summarize(trace: SimTrace, rate: float) -> PolicyReport:
    n = len(trace.arrival)
    makespan = float(np.nanmax(trace.finish) - trace.arrival.min())
    ok, ok_tight = meets(trace, PAPER_SLA), meets(trace, TIGHT_SLA)
    ttft = trace.first_token - trace.arrival
    util = trace.step_kv_used / trace.num_kv_slots
    cached = trace.step_kv_cached / trace.num_kv_slots
    prompt = max(int(trace.prompt_len.sum()), 1)
    block_hits = sum(block_aligned(int(c), BLOCK_SIZE) for c in trace.cached_tokens)
    return PolicyReport(
        rate=rate,
        num_requests=n,
        goodput=float(ok.sum()) / makespan,
        goodput_tight=float(ok_tight.sum()) / makespan,
        sla_attainment=float(ok.mean()),
        sla_attainment_tight=float(ok_tight.mean()),
        throughput_requests_per_s=float((~np.isnan(trace.finish)).sum()) / makespan,
        throughput_output_tokens_per_s=float(trace.output_len.sum()) / makespan,
        preemptions=int(trace.preemptions.sum()),
        preempted_requests=int((trace.preemptions > 0).sum()),
        kv_util_mean=float(util.mean()) if len(util) else 0.0,
        kv_util_p99=float(np.percentile(util, 99)) if len(util) else 0.0,
        kv_cached_evictable_mean=float(cached.mean()) if len(cached) else 0.0,
        prefix_hit_rate=float(trace.cached_tokens.sum()) / prompt,
        prefix_hit_rate_block16=block_hits / prompt,
        ttft_mean_s=float(np.nanmean(ttft)),
        ttft_p50_s=float(np.nanpercentile(ttft, 50)),
        ttft_p99_s=float(np.nanpercentile(ttft, 99)),
        max_itl_p99_s=float(np.percentile(trace.max_gap, 99)),
        **miss_reasons(trace, PAPER_SLA),
        kv_full_steps=float((util >= 0.95).mean()) if len(util) else 0.0,
        mean_step_ms=float(trace.step_time.mean() * 1e3) if len(trace.step_time) else 0.0,
        num_steps=len(trace.step_time),
        makespan_s=makespan,
        sim_wall_s=trace.wall_s,
    )
