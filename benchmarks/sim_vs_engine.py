"""Simulator vs the real engine on CPU: one workload, the same scheduler settings, both ways.

1. Calibration: a separate workload (another seed) runs on the real EngineCore; every step's
   (prefill tokens, decode requests, KV tokens read, seconds) is recorded and the simulator's
   linear cost model is fitted to them with `fit_cost_model`.
2. Validation: the workload runs on a fresh EngineCore, requests submitted in real time as their
   arrival times pass, then in the simulator with the fitted coefficients: same arrivals,
   prompts, lengths, pool, scheduler config, policy and prefix cache.

Requests use ignore_eos and max_tokens = their true length in the engine; the simulator gets the
same max_tokens (so admission sees the same caps) and ends them at the same lengths.

    .venv/bin/python -m raylight.benchmarks.sim_vs_engine --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raylight.engine.config import EngineOptions
from raylight.engine.engine_core import EngineCore
from raylight.engine.sim.cost_model import CostModel, batch_features, fit_cost_model
from raylight.engine.sim.loop import SimConfig, simulate
from raylight.engine.sim.workloads import Workload

Sample = tuple[float, float, float, float]  # prefill tokens, decode requests, KV tokens, seconds


@dataclass(frozen=True, slots=True)
class Setup:
    """The replica and the workload; `num_kv_slots` is the engine's (dummy slot 0 included)."""

    preset: str = "tiny"
    policy: str = "aggressive"
    num_kv_slots: int = 4000
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 1024
    num_requests: int = 300
    rate: float = 100.0
    seed: int = 0
    calib_requests: int = 300
    calib_rate: float = 100.0
    torch_threads: int = 1
    clock: str = "wall"  # or "cpu": see Clock


@dataclass(frozen=True, slots=True)
class RunResult:
    """Throughput over the makespan (first arrival to last finish), as in the simulator."""

    num_requests: int
    output_tokens: int
    makespan_s: float
    output_tokens_per_s: float
    requests_per_s: float
    preemptions: int
    preempted_requests: int
    ttft_mean_s: float
    num_steps: int
    busy_s: float  # sum of step times


def chat_workload(n: int, rate: float, seed: int, vocab: int, max_model_len: int) -> Workload:
    """ShareGPT-like lengths scaled down (prompts mean 120, outputs mean 100, lognormal),
    Poisson arrivals; max_tokens = the true output length."""
    rng = np.random.default_rng([seed, 0])
    mean_p, mean_o, sigma = 120.0, 100.0, 0.8
    prompt = np.clip(rng.lognormal(np.log(mean_p) - sigma**2 / 2, sigma, n), 4, 512)
    out = np.clip(rng.lognormal(np.log(mean_o) - sigma**2 / 2, sigma, n), 2, 400)
    prompt, out = prompt.astype(np.int64), out.astype(np.int64)
    arrival = np.cumsum(np.random.default_rng([seed, 1]).exponential(1.0 / rate, n))
    start = np.concatenate([[0], np.cumsum(prompt)[:-1]]).astype(np.int64)
    tokens = np.random.default_rng([seed, 2]).integers(2, vocab, int(prompt.sum()), np.int32)
    return Workload(
        "chat-small", rate, arrival, prompt, out, out.copy(), start, tokens, max_model_len
    )


class Clock:
    """The engine run's clock. "wall": real time; idle gaps are slept. "cpu": this thread's CPU
    time (torch runs on this thread with torch_threads=1), so time other processes take from a
    shared CPU does not count; idle gaps are skipped, as the simulator skips them."""

    def __init__(self, kind: str) -> None:
        if kind not in ("wall", "cpu"):
            raise ValueError(f"clock must be wall or cpu, got {kind!r}")
        self._read = time.perf_counter if kind == "wall" else time.thread_time
        self._sleep = kind == "wall"
        self._skipped = 0.0
        self._t0 = self._read()

    def now(self) -> float:
        return self._read() - self._t0 + self._skipped

    def wait_until(self, t: float) -> None:
        gap = t - self.now()
        if gap > 0:
            if self._sleep:
                time.sleep(gap)
            else:
                self._skipped += gap


class _TimedRunner:
    """Wraps a ModelRunner to remember the features of the batch it last executed."""

    def __init__(self, runner: object) -> None:
        self.runner = runner
        self.features: tuple[int, int, int] = (0, 0, 0)

    def execute(self, batch: object) -> object:
        self.features = batch_features(batch)  # type: ignore[arg-type]
        return self.runner.execute(batch)  # type: ignore[attr-defined]


def make_core(model_dir: Path, setup: Setup) -> EngineCore:
    from raylight.engine.llm import create_engine_core

    options = EngineOptions(
        dtype="float32",
        max_model_len=setup.max_model_len,
        max_num_seqs=setup.max_num_seqs,
        max_num_batched_tokens=setup.max_num_batched_tokens,
        num_kv_slots=setup.num_kv_slots,
        admission_policy=setup.policy,
        device="cpu",
    )
    return create_engine_core(model_dir, options, progress=False)


def run_engine(core: EngineCore, w: Workload, clock: Clock) -> tuple[RunResult, list[Sample]]:
    """Submits each request once its arrival time has passed on `clock` and steps the core
    until all are done; returns the result and one sample per step."""
    from raylight.engine.sampling_params import SamplingParams

    n = len(w)
    reqs = [
        core.make_request(
            str(i),
            w.prompt(i),
            SamplingParams(max_tokens=int(w.max_tokens[i]), ignore_eos=True, temperature=0.0),
        )
        for i in range(n)
    ]
    timed = _TimedRunner(core.runner)
    core.runner = timed  # type: ignore[assignment]
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    samples: list[Sample] = []
    nxt = 0
    while nxt < n or core.has_unfinished:
        now = clock.now()
        while nxt < n and w.arrival[nxt] <= now:
            core.add(reqs[nxt])
            nxt += 1
        if not core.has_unfinished:
            clock.wait_until(float(w.arrival[nxt]))
            continue
        deltas = core.step()
        end = clock.now()
        samples.append((*timed.features, end - now))
        for d in deltas:
            i = int(d.request_id)
            if np.isnan(first[i]):
                first[i] = end
            if d.finish_reason is not None:
                finish[i] = end
    core.runner = timed.runner  # type: ignore[assignment]
    preempt = np.array([r.num_preemptions for r in reqs])
    step_s = np.array([s[3] for s in samples])
    return _result(w, first, finish, preempt, step_s), samples


def _result(
    w: Workload, first: np.ndarray, finish: np.ndarray, preemptions: np.ndarray, step_s: np.ndarray
) -> RunResult:
    makespan = float(np.nanmax(finish) - w.arrival.min())
    done = ~np.isnan(finish)
    out = int(w.output_len[done].sum())
    return RunResult(
        num_requests=int(done.sum()),
        output_tokens=out,
        makespan_s=makespan,
        output_tokens_per_s=out / makespan,
        requests_per_s=float(done.sum()) / makespan,
        preemptions=int(preemptions.sum()),
        preempted_requests=int((preemptions > 0).sum()),
        ttft_mean_s=float(np.nanmean(first - w.arrival)),
        num_steps=len(step_s),
        busy_s=float(step_s.sum()),
    )


def run_sim(w: Workload, setup: Setup, cost: CostModel) -> RunResult:
    config = SimConfig(
        num_kv_slots=setup.num_kv_slots - 1,  # the engine's count includes the dummy slot 0
        max_num_seqs=setup.max_num_seqs,
        max_num_batched_tokens=setup.max_num_batched_tokens,
        prefix_cache=True,
    )
    trace = simulate(w, setup.policy, config, cost)
    return _result(w, trace.first_token, trace.finish, trace.preemptions, trace.step_time)


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


def _fit_error(cost: CostModel, samples: list[Sample]) -> dict[str, float]:
    """How well the fitted model predicts the validation run's own steps."""
    pred = np.array([cost.step_time(*s[:3]) for s in samples])
    real = np.array([s[3] for s in samples])
    return {
        "busy_time_rel_error": float(pred.sum() / real.sum() - 1),
        "median_abs_step_rel_error": float(np.median(np.abs(pred / real - 1))),
    }


def compare(model_dir: Path, setup: Setup, progress: bool = True) -> dict[str, object]:
    """The whole benchmark; returns the JSON-ready result."""
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
    # The same comparison with the cost fitted in-sample (on the workload run's own steps): what
    # is left is the simulator's dynamics, not the calibration's luck on a shared CPU.
    in_sample, _ = fit(samples)
    sim_in = run_sim(w, setup, in_sample)
    keys = ("output_tokens_per_s", "requests_per_s", "preemptions", "ttft_mean_s", "busy_s")
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
        "relative_difference": {k: _rel(getattr(sim, k), getattr(real, k)) for k in keys},
        "in_sample_cost_model": asdict(in_sample),
        "sim_in_sample": asdict(sim_in),
        "relative_difference_in_sample": {
            k: _rel(getattr(sim_in, k), getattr(real, k)) for k in keys
        },
    }


def _log(on: bool, line: str) -> None:
    if on:
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="default: make_model(preset)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
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
        result = compare(model_dir, setup)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
