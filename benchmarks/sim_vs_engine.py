"""Simulator vs the real engine on CPU: one workload, the same scheduler settings, both ways.

1. Calibration: a separate workload (another seed) runs on the real EngineCore; every step's
   (prefill tokens, decode requests, KV tokens read, seconds) is recorded and the simulator's
   linear cost model is fitted to them with `fit_cost_model`.
2. Validation: the workload runs on a fresh EngineCore, requests submitted in real time as their
   arrival times pass, then in the simulator with the fitted coefficients: same arrivals,
   prompts, lengths, pool, scheduler config, policy and prefix cache. The simulator also runs
   with coefficients fitted on the validation run's own steps ("in sample"): what differs then
   is the simulator's dynamics, not how the calibration run's timings carried over.
3. `--repeats N` does all of it N times and reports each difference's min, median and max: on
   a shared CPU one run's timings are noisy.

Requests use ignore_eos and max_tokens = their true length in the engine; the simulator gets the
same max_tokens (so admission sees the same caps) and ends them at the same lengths.

    .venv/bin/python -m raylight.benchmarks.sim_vs_engine --repeats 3 --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from raylight.benchmarks.sim_vs_engine_real import Clock, make_core, run_engine
from raylight.benchmarks.sim_vs_engine_setup import (
    RunResult,
    Sample,
    Setup,
    chat_workload,
    run_result,
)
from raylight.engine.sim.cost_model import CostModel, fit_cost_model
from raylight.engine.sim.loop import SimConfig, simulate
from raylight.engine.sim.workloads import Workload

__all__ = ["Setup", "chat_workload", "compare", "compare_repeated", "main"]

KEYS = ("output_tokens_per_s", "requests_per_s", "preemptions", "ttft_mean_s", "busy_s")


def run_sim(w: Workload, setup: Setup, cost: CostModel) -> RunResult:
    config = SimConfig(
        num_kv_slots=setup.num_kv_slots - 1,  # the engine's count includes the dummy slot 0
        max_num_seqs=setup.max_num_seqs,
        max_num_batched_tokens=setup.max_num_batched_tokens,
        prefix_cache=True,
    )
    trace = simulate(w, setup.policy, config, cost)
    return run_result(w, trace.first_token, trace.finish, trace.preemptions, trace.step_time)


def fit(samples: list[Sample]) -> tuple[CostModel, float]:
    """`fit_cost_model`, refitted without the steps whose residual exceeds 5x the median one
    (steps stretched by other processes on a shared CPU); also the fraction of steps kept."""
    data = np.asarray(samples, dtype=np.float64)
    first = fit_cost_model(data)
    pred = np.array([first.step_time(*row[:3]) for row in data])
    resid = np.abs(data[:, 3] - pred)
    keep = resid <= 5 * np.median(resid)
    return fit_cost_model(data[keep]), float(keep.mean())


def _rel(sim: float, real: float) -> float:
    return (sim - real) / real if real else float(sim != real)


def _differences(sim: RunResult, real: RunResult) -> dict[str, float]:
    return {k: _rel(getattr(sim, k), getattr(real, k)) for k in KEYS}


def _fit_error(cost: CostModel, samples: list[Sample]) -> dict[str, float]:
    """How well the fitted model predicts the validation run's own steps."""
    pred = np.array([cost.step_time(*s[:3]) for s in samples])
    real = np.array([s[3] for s in samples])
    return {
        "busy_time_rel_error": float(pred.sum() / real.sum() - 1),
        "median_abs_step_rel_error": float(np.median(np.abs(pred / real - 1))),
    }


def compare(model_dir: Path, setup: Setup, progress: bool = True) -> dict[str, object]:
    """One calibration + validation pass; returns the JSON-ready result."""
    import torch

    from raylight.engine.model_config import load_arch_config

    torch.set_num_threads(setup.torch_threads)
    vocab = load_arch_config(model_dir).vocab_size
    calib = chat_workload(
        setup.calib_requests, setup.calib_rate, setup.seed + 1, vocab, setup.max_model_len
    )
    _, calib_samples = run_engine(make_core(model_dir, setup), calib, Clock(setup.clock))
    warm = min(10, len(calib_samples) // 4)  # the first steps pay one-off warm-up costs
    cost, kept = fit(calib_samples[warm:])
    _log(progress, f"calibration: {len(calib_samples)} steps, fitted {cost}")
    w = chat_workload(setup.num_requests, setup.rate, setup.seed, vocab, setup.max_model_len)
    real, samples = run_engine(make_core(model_dir, setup), w, Clock(setup.clock))
    _log(progress, f"engine: {real}")
    sim = run_sim(w, setup, cost)
    _log(progress, f"sim:    {sim}")
    in_sample, _ = fit(samples)
    sim_in = run_sim(w, setup, in_sample)
    return {
        "setup": asdict(setup),
        "fit": "fit_cost_model on a separate calibration run (seed + 1; its first steps dropped "
        "as warm-up), refitted without steps whose residual > 5x the median; validated on the "
        "workload run",
        "cost_model": asdict(cost),
        "calibration_steps": len(calib_samples) - warm,
        "calibration_steps_kept": kept,
        "fit_on_validation_steps": _fit_error(cost, samples),
        "engine": asdict(real),
        "sim": asdict(sim),
        "relative_difference": _differences(sim, real),
        "in_sample_cost_model": asdict(in_sample),
        "sim_in_sample": asdict(sim_in),
        "relative_difference_in_sample": _differences(sim_in, real),
    }


def spread(runs: list[dict[str, object]], field: str) -> dict[str, dict[str, float]]:
    """Per key of `field` (a relative-difference dict of each run): min, median, max."""
    out = {}
    for k in KEYS:
        values = np.array([run[field][k] for run in runs])  # type: ignore[index]
        out[k] = {
            "min": float(values.min()),
            "median": float(np.median(values)),
            "max": float(values.max()),
        }
    return out


def compare_repeated(
    model_dir: Path, setup: Setup, repeats: int, progress: bool = True
) -> dict[str, object]:
    """`compare` `repeats` times on the same setup (fresh engines each time)."""
    runs = []
    for i in range(repeats):
        _log(progress, f"repeat {i + 1}/{repeats}")
        runs.append(compare(model_dir, setup, progress))
    return {
        "repeats": repeats,
        "spread": spread(runs, "relative_difference"),
        "spread_in_sample": spread(runs, "relative_difference_in_sample"),
        "runs": runs,
    }


def _log(on: bool, line: str) -> None:
    if on:
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="default: make_model(preset)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    p.add_argument("--repeats", type=int, default=1, help="run it all this many times")
    for name, value in asdict(Setup()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args(argv)
    setup = Setup(**{k: getattr(args, k) for k in asdict(Setup())})
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from raylight.engine.modelgen.make_model import make_model

            model_dir = make_model(
                None, setup.preset, Path(tmp) / setup.preset, dtype="float32", progress=False
            )
        if args.repeats > 1:
            result = compare_repeated(model_dir, setup, args.repeats)
        else:
            result = compare(model_dir, setup)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
