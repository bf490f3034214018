"""What the prefix cache buys on one workload: per policy, the token-level hit rate against the
16-token-block estimate, and TTFT with the cache against the same run without it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from raylight.engine.sim.metrics import PolicyReport
from raylight.engine.sim.sweep import Progress, SimSetup, run_policies


@dataclass(frozen=True, slots=True)
class PrefixEffect:
    """One policy at one rate, the cache on vs off (hit rates are from the run with it on)."""

    hit_rate_token: float  # cached prompt tokens / prompt tokens
    hit_rate_block16: float  # the same hits rounded down to whole 16-token blocks
    hit_rate_difference: float  # token - block16, in fractions of all prompt tokens
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    ttft_mean_s_no_cache: float
    ttft_p50_s_no_cache: float
    ttft_p99_s_no_cache: float
    goodput: float
    goodput_no_cache: float
    kv_cached_evictable_mean: float

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def compare(on: PolicyReport, off: PolicyReport) -> PrefixEffect:
    return PrefixEffect(
        hit_rate_token=on.prefix_hit_rate,
        hit_rate_block16=on.prefix_hit_rate_block16,
        hit_rate_difference=on.prefix_hit_rate - on.prefix_hit_rate_block16,
        ttft_mean_s=on.ttft_mean_s,
        ttft_p50_s=on.ttft_p50_s,
        ttft_p99_s=on.ttft_p99_s,
        ttft_mean_s_no_cache=off.ttft_mean_s,
        ttft_p50_s_no_cache=off.ttft_p50_s,
        ttft_p99_s_no_cache=off.ttft_p99_s,
        goodput=on.goodput,
        goodput_no_cache=off.goodput,
        kv_cached_evictable_mean=on.kv_cached_evictable_mean,
    )


def prefix_effect(
    setup: SimSetup,
    policies: Sequence[str],
    rate: float,
    with_cache: dict[str, PolicyReport] | None = None,
    progress: Progress | None = None,
) -> dict[str, PrefixEffect]:
    """Runs `policies` at `rate` without the cache (and with it, unless `with_cache` has them:
    `setup` must then have the cache on)."""
    on_setup = replace(setup, config=replace(setup.config, prefix_cache=True))
    off_setup = replace(setup, config=replace(setup.config, prefix_cache=False))
    on = dict(with_cache or {})
    missing = [p for p in policies if p not in on]
    on.update(run_policies(on_setup, missing, rate, progress))
    off = run_policies(off_setup, policies, rate, progress)
    return {p: compare(on[p], off[p]) for p in policies}
