"""One policy run of the scheduling simulator with chosen past-future knobs, on one scenario:
how the knobs (safety, draws, quantile of the draws' peaks) trade goodput for preemptions.

    python -m raylight.benchmarks.pf_knobs --workload reasoning --rate 1.775943 \
        [--seed 0] [--pool-tokens 450000] [--max-num-seqs 1024] [--cost-model h100-llama3-8b] \
        [--no-prefix-cache] [--policy past-future] [--safety 0.95] [--num-draws 16] \
        [--quantile 1.0]

Prints one JSON object: the scenario, the knobs and the policy's report. (Before 2026-12-02 this
took `SAFETY NUM_DRAWS QUANTILE` for reasoning at 1.818 req/s on the H100 cost model only.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from raylight.cluster.cli_sim import WORKLOADS
from raylight.engine.admission import PastFutureConfig
from raylight.engine.sim.cost_model import COST_MODELS
from raylight.engine.sim.loop import SimConfig
from raylight.engine.sim.sweep import POLICIES, SimSetup, run_policy


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raylight.benchmarks.pf_knobs")
    p.add_argument("--workload", choices=WORKLOADS, required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-requests", type=int, default=5000)
    p.add_argument("--pool-tokens", type=int, default=450_000)
    p.add_argument("--max-num-seqs", type=int, default=1024)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--cost-model", choices=sorted(COST_MODELS), default="h100-llama3-8b")
    p.add_argument("--no-prefix-cache", action="store_true")
    p.add_argument("--policy", choices=POLICIES, default="past-future")
    defaults = PastFutureConfig()
    p.add_argument("--safety", type=float, default=defaults.safety)
    p.add_argument("--num-draws", type=int, default=defaults.num_draws)
    p.add_argument("--quantile", type=float, default=defaults.quantile)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    knobs = PastFutureConfig(safety=a.safety, num_draws=a.num_draws, quantile=a.quantile)
    config = SimConfig(num_kv_slots=a.pool_tokens, max_num_seqs=a.max_num_seqs,
                       max_num_batched_tokens=a.max_num_batched_tokens,
                       prefix_cache=not a.no_prefix_cache, past_future=knobs)  # fmt: skip
    setup = SimSetup(a.workload, a.num_requests, a.seed, config, COST_MODELS[a.cost_model]())
    report = run_policy(setup, a.policy, a.rate)
    scenario = {k: v for k, v in vars(a).items() if k not in ("safety", "num_draws", "quantile")}
    knobs_out = dataclasses.asdict(knobs) if a.policy == "past-future" else None
    print(json.dumps({"scenario": scenario, "knobs": knobs_out,
                      "report": dataclasses.asdict(report)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
