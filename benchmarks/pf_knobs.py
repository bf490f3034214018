"""Past-future knobs on one scenario: reasoning, Llama-3.1-8B on one H100 (450k-token pool,
roofline cost model), at 1.818 req/s (where aggressive first misses the SLA), 5000 requests.

    python -m raylight.benchmarks.pf_knobs SAFETY NUM_DRAWS QUANTILE
"""

from __future__ import annotations

import sys
import time

from raylight.engine.admission import PastFutureConfig
from raylight.engine.sim.cost_model import h100_llama3_8b
from raylight.engine.sim.loop import SimConfig, simulate
from raylight.engine.sim.metrics import summarize
from raylight.engine.sim.workloads import make_workload

RATE = 1.818182
POOL_TOKENS = 450_000


def main(argv: list[str]) -> int:
    safety, draws, quantile = float(argv[0]), int(argv[1]), float(argv[2])
    knobs = PastFutureConfig(safety=safety, num_draws=draws, quantile=quantile)
    config = SimConfig(num_kv_slots=POOL_TOKENS, past_future=knobs)
    start = time.perf_counter()
    trace = simulate(make_workload("reasoning", 5000, RATE, 0), "past-future", config,
                     h100_llama3_8b())  # fmt: skip
    r = summarize(trace, RATE)
    print(f"safety {safety} draws {draws} quantile {quantile}: goodput {r.goodput:.3f}, "
          f"preemptions {r.preemptions}, attainment {r.sla_attainment:.4f}, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
