"""Event-driven simulator of one engine replica: the real scheduler, KV allocator and admission
policies driven by synthetic workloads, with a linear step-time cost model instead of a GPU.

    workload = make_workload("reasoning", 5000, rate=2.5, seed=0)
    trace = simulate(workload, "past-future", SimConfig(), h200_llama3_8b())
    report = summarize(trace, rate=2.5)
"""

from raylight.engine.sim.cost_model import CostModel, fit_cost_model, h200_llama3_8b
from raylight.engine.sim.loop import SimConfig, SimTrace, simulate
from raylight.engine.sim.metrics import PAPER_SLA, TIGHT_SLA, PolicyReport, Sla, summarize
from raylight.engine.sim.workloads import Workload, make_workload

__all__ = [
    "PAPER_SLA",
    "TIGHT_SLA",
    "CostModel",
    "PolicyReport",
    "SimConfig",
    "SimTrace",
    "Sla",
    "Workload",
    "fit_cost_model",
    "h200_llama3_8b",
    "make_workload",
    "simulate",
    "summarize",
]
