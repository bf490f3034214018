"""What the simulator-vs-engine benchmark runs on both sides: the replica and workload settings,
the workload itself, and the summary of one run (the same for the engine and the simulator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    clock: str = "wall"  # or "cpu": see sim_vs_engine_real.Clock


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


def run_result(
    w: Workload, first: np.ndarray, finish: np.ndarray, preemptions: np.ndarray, step_s: np.ndarray
) -> RunResult:
    """One run's summary from per-request first-token and finish times (NaN: never), per-request
    preemption counts and per-step seconds."""
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
