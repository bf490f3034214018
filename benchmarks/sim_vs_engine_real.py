"""The real side of the simulator-vs-engine benchmark: an EngineCore on CPU fed a workload in
(real or CPU) time, every step's batch features and duration recorded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from raylight.benchmarks.sim_vs_engine_setup import RunResult, Sample, Setup, run_result
from raylight.engine.config import EngineOptions
from raylight.engine.engine_core import EngineCore
from raylight.engine.sim.cost_model import batch_features
from raylight.engine.sim.workloads import Workload


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
    return run_result(w, first, finish, preempt, step_s), samples
