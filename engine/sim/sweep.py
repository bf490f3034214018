"""Runs policies against one workload at one rate, and finds the rate at which a policy first
misses the SLA on a fixed geometric grid of rates.

What a comparison at that rate can show: goodput = requests meeting the SLA / makespan, so
past-future / aggressive = (attainment_pf / attainment_agg) x (makespan_agg / makespan_pf).
Aggressive's attainment there is below MISS_ATTAINMENT but was above it one grid step lower;
unless it falls off a cliff within that step, the ratio is at most about 1 / 0.95
(x the makespan ratio, near 1 while aggressive's backlog is small). A ratio of 1.2 needs
aggressive to drop below ~0.8 in one step while past-future holds: preemption thrashing that
starts below past-future's own capacity. Where both are past their capacity (compute-bound
chat, or a memory-bound pool both fill), both collapse together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from raylight.engine.sim.cost_model import CostModel
from raylight.engine.sim.loop import SimConfig, simulate
from raylight.engine.sim.metrics import PolicyReport, summarize
from raylight.engine.sim.workloads import make_workload

POLICIES = ("past-future", "aggressive", "conservative")
# Grid anchors, near each workload's capacity with the default H200 / Llama-3.1-8B cost model.
BASE_RATE = {"sharegpt": 40.0, "bursty": 40.0, "reasoning": 2.0, "multiturn": 10.0}
MISS_ATTAINMENT = 0.95  # below this fraction of requests meeting the SLA, a policy "misses"

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SimSetup:
    """Everything but the policy and the rate."""

    workload: str
    num_requests: int
    seed: int
    config: SimConfig
    cost: CostModel


def run_policy(setup: SimSetup, policy: str, rate: float) -> PolicyReport:
    workload = make_workload(setup.workload, setup.num_requests, rate, setup.seed)
    return summarize(simulate(workload, policy, setup.config, setup.cost), rate)


def run_policies(
    setup: SimSetup, policies: Sequence[str], rate: float, progress: Progress | None = None
) -> dict[str, PolicyReport]:
    reports = {}
    for policy in policies:
        reports[policy] = run_policy(setup, policy, rate)
        if progress:
            r = reports[policy]
            progress(
                f"{setup.workload} rate={rate:.3g} {policy}: attainment {r.sla_attainment:.3f}, "
                f"goodput {r.goodput:.3g} req/s, {r.preemptions} preemptions ({r.sim_wall_s:.1f} s)"
            )
    return reports


def grid_rate(base: float, factor: float, k: int) -> float:
    return round(base * factor**k, 6)


def find_miss_rate(
    setup: SimSetup,
    policy: str = "aggressive",
    factor: float = 1.1,
    max_points: int = 24,
    progress: Progress | None = None,
    base_rate: float | None = None,
) -> tuple[float, dict[float, PolicyReport]]:
    """The lowest rate of the grid base_rate x factor^k at which `policy` misses the SLA while
    the grid point below it does not; also every report computed on the way, by rate.
    base_rate defaults to BASE_RATE of the workload (anchors for the H200 cost model)."""
    base = BASE_RATE[setup.workload] if base_rate is None else base_rate
    seen: dict[float, PolicyReport] = {}

    def misses(k: int) -> bool:
        return _misses(setup, policy, grid_rate(base, factor, k), seen, progress)

    k = 0
    step = -1 if misses(0) else 1
    for _ in range(max_points):
        if step > 0 and misses(k + 1):
            return grid_rate(base, factor, k + 1), seen
        if step < 0 and not misses(k - 1):
            return grid_rate(base, factor, k), seen
        k += step
    raise RuntimeError(f"no SLA miss found within {max_points} grid points of {base} req/s")


def refine_miss_rate(
    setup: SimSetup,
    below: float,
    miss: float,
    factor: float,
    seen: dict[float, PolicyReport],
    policy: str = "aggressive",
    progress: Progress | None = None,
) -> float:
    """The first rate of the finer grid below x factor^j (j >= 1) under `miss` at which `policy`
    misses the SLA, `miss` itself if none does; `below` must meet it and `miss` miss it.
    Reports computed on the way are added to `seen`."""
    rate = round(below * factor, 6)
    while rate < miss:
        if _misses(setup, policy, rate, seen, progress):
            return rate
        rate = round(rate * factor, 6)
    return miss


def _misses(setup: SimSetup, policy: str, rate: float, seen: dict[float, PolicyReport],
            progress: Progress | None) -> bool:  # fmt: skip
    """Whether `policy` misses the SLA at `rate` (each rate simulated once, kept in `seen`)."""
    if rate not in seen:
        seen[rate] = run_policies(setup, [policy], rate, progress)[policy]
    return seen[rate].sla_attainment < MISS_ATTAINMENT


def sweep(
    setup: SimSetup,
    policies: Sequence[str],
    miss_rate: float,
    factor: float = 1.1,
    below: int = 4,
    above: int = 2,
    progress: Progress | None = None,
) -> dict[float, dict[str, PolicyReport]]:
    """Every policy at the grid rates from `below` points under `miss_rate` to `above` over it
    (for goodput-vs-rate curves)."""
    rates = [round(miss_rate * factor**k, 6) for k in range(-below, above + 1)]
    return {rate: run_policies(setup, policies, rate, progress) for rate in rates}
