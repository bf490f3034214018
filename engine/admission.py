"""Admission policies: may a waiting request start now? Pluggable behind one small interface.

A policy only answers yes or no; the scheduler owns the pool and preempts by recompute when the
pool runs out anyway (which the conservative policy never lets happen).

Past-future (LightLLM, "Past-Future Scheduler for LLM Serving under SLA Guarantees", ASPLOS'25)
predicts the batch's future KV peak from the output lengths of recently finished requests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from raylight.engine.request import Request

# Stands for "no information: assume the request runs to its max_tokens" in the seeded history.
_UNKNOWN = np.iinfo(np.int64).max // 4


def max_future_slots(req: Request) -> int:
    """KV slots `req` may still take: every token but the last one sampled gets K/V."""
    return req.num_prompt_tokens + req.max_tokens - 1 - req.num_computed_tokens


class AdmissionPolicy(Protocol):
    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        """Called once per schedule() before any `admit` call, with the running set."""
        ...

    def admit(self, req: Request) -> bool:
        """Whether `req` may start now; if yes, the policy counts it as running."""
        ...

    def on_finish(self, req: Request) -> None:
        """Called once when `req` finishes by a stop token or its length (not on abort)."""
        ...


class ConservativePolicy:
    """Reserve `prompt + max_tokens` for every request: never preempts, may under-fill the pool."""

    def __init__(self) -> None:
        self._headroom = 0

    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        self._headroom = num_free_slots - sum(max_future_slots(r) for r in running)

    def admit(self, req: Request) -> bool:
        need = max_future_slots(req)
        if need > self._headroom:
            return False
        self._headroom -= need
        return True

    def on_finish(self, req: Request) -> None:
        pass


class AggressivePolicy:
    """Admit while slots are free (vLLM-style); the scheduler preempts when they run out."""

    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        pass

    def admit(self, req: Request) -> bool:
        return True

    def on_finish(self, req: Request) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PastFutureConfig:
    """Knobs of the past-future policy.

    `window`: the most recent finished requests whose output lengths are remembered. The history
    starts as `prior` (at most `window`) "unknown" lengths, i.e. each request's own max_tokens:
    the policy starts as conservative, since the first requests to finish are the short ones.
    Each finish replaces one unknown until none is left. `num_draws` length draws per request;
    the predicted peak is the `quantile` (1.0: the max) of the draws' peaks and must stay within
    `safety` x the slots the batch may use. The max over more draws is more cautious: on
    reasoning with a 450k-token pool at aggressive's SLA-miss rate, 4 draws preempted 4.9% of
    requests and 16 draws 0.86% (benchmarks/results/cpu-2026-11-22-sim-pf-knobs.json). A lower
    quantile admits more: 0.75 gains goodput on every scenario of cpu-2026-12-02-sim-pf-quantile
    .json but preempts 0.98% of requests on that reasoning case (1.0: 0.60%), at the target's edge.
    """

    window: int = 1000
    prior: int = 100
    num_draws: int = 16
    quantile: float = 1.0
    safety: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.window, self.num_draws, self.prior) < 1:
            raise ValueError("window, prior and num_draws must be at least 1")
        if not (0.0 <= self.quantile <= 1.0 and 0.0 < self.safety <= 1.0):
            raise ValueError("quantile must be in [0, 1] and safety in (0, 1]")


def future_peak(held: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """Peak KV slots of a batch that only decodes from now on, one row per draw.

    held: [..., n] slots request j holds before the next step; remaining: [..., n] >= 1 tokens it
    still samples. At step t (1-based) request j holds held_j + t slots while t <= remaining_j and
    frees everything after step remaining_j. Use only grows between finishes, so the peak is at
    a step t = r_(i): sorting by remaining descending, the i requests still alive hold
    cumsum(held)_i + i * r_(i). Returns [...] peaks.
    """
    order = np.argsort(-remaining, axis=-1, kind="stable")
    r_sorted = np.take_along_axis(remaining, order, axis=-1)
    h_sorted = np.take_along_axis(np.broadcast_to(held, remaining.shape), order, axis=-1)
    alive = np.arange(1, remaining.shape[-1] + 1)
    return (np.cumsum(h_sorted, axis=-1) + alive * r_sorted).max(axis=-1)


def draw_final_lengths(
    history: np.ndarray, done: np.ndarray, cap: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Final output lengths drawn from `history` conditioned on being > `done`.

    history: [m] ascending; done: [n] tokens already sampled; cap: [n] max_tokens (> done);
    u: [k, n] uniforms in [0, 1). As LightLLM, the conditional distribution is the piecewise-
    linear inverse CDF through the points [done, history values > done ..., cap]: with no
    history value above `done` the draw is uniform in (done, cap], and the last segment always
    reaches `cap`, a pessimistic tail. Returns [k, n] int64 lengths in [done + 1, cap].
    """
    m = len(history)
    pos = np.searchsorted(history, done, side="right")  # history[pos:] > done
    last = m - pos + 1  # index of the cap point; points are 0..last
    x = u * last
    j = x.astype(np.int64)
    frac = x - j

    def point(idx: np.ndarray) -> np.ndarray:
        inner = history[np.clip(pos + idx - 1, 0, m - 1)]
        return np.where(idx == 0, done, np.where(idx >= last, cap, np.minimum(inner, cap)))

    lo, hi = point(j), point(j + 1)
    lengths = np.ceil(lo + (hi - lo) * frac).astype(np.int64)
    return np.clip(lengths, done + 1, cap)


class PastFuturePolicy:
    """Admit while the predicted future KV peak of running + admitted requests fits the pool.

    Invariants: the history holds at most `window` lengths, at least one (unknown or known);
    draws for the running set are made once per step, lazily on the first `admit`; a request is
    always admitted into an empty batch, so the policy can never stall the scheduler.
    """

    def __init__(self, config: PastFutureConfig | None = None) -> None:
        self.config = config or PastFutureConfig()
        self._lengths: deque[int] = deque(maxlen=self.config.window)
        # Seeded unknown lengths not yet replaced by known ones.
        self._unknown = min(self.config.prior, self.config.window)
        self._sorted: np.ndarray | None = None
        self._rng = np.random.default_rng(self.config.seed)
        self._running: Sequence[Request] = ()
        self._budget = 0
        self._held = np.zeros(0, dtype=np.int64)  # [n]
        self._remaining: np.ndarray | None = None  # [k, n], None until drawn this step

    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        self._running = running
        self._budget = num_free_slots + sum(r.num_computed_tokens for r in running)
        self._remaining = None

    def admit(self, req: Request) -> bool:
        if self._remaining is None:
            self._held, self._remaining = self._draw(self._running)
        held, remaining = self._draw([req])
        held = np.concatenate([self._held, held])
        remaining = np.concatenate([self._remaining, remaining], axis=1)
        if len(held) > 1:
            peaks = future_peak(held, remaining)
            if np.quantile(peaks, self.config.quantile) > self.config.safety * self._budget:
                return False
        self._held, self._remaining = held, remaining
        return True

    def on_finish(self, req: Request) -> None:
        self._lengths.append(len(req.output_token_ids))
        self._unknown = max(0, min(self._unknown - 1, self.config.window - len(self._lengths)))
        self._sorted = None

    def history(self) -> np.ndarray:
        """The remembered lengths, oldest first, after the unknown seeds still left."""
        return np.array([_UNKNOWN] * self._unknown + list(self._lengths), dtype=np.int64)

    def _draw(self, reqs: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        """(held [n], remaining [k, n]) for `reqs`: a request holds (or will once its prompt is
        in) num_tokens - 1 slots; the last sampled token gets its K/V in the next step."""
        if self._sorted is None:
            self._sorted = np.sort(self.history())
        n = len(reqs)
        done = np.fromiter((len(r.output_token_ids) for r in reqs), np.int64, n)
        cap = np.fromiter((r.max_tokens for r in reqs), np.int64, n)
        held = np.fromiter((r.num_tokens for r in reqs), np.int64, n) - 1
        u = self._rng.random((self.config.num_draws, n))
        lengths = draw_final_lengths(self._sorted, done, np.maximum(cap, done + 1), u)
        return held, lengths - done


def make_policy(name: str, past_future: PastFutureConfig | None = None) -> AdmissionPolicy:
    """The policy called `name`; `past_future` configures the past-future policy only."""
    if name == "past-future":
        return PastFuturePolicy(past_future)
    policies = {"conservative": ConservativePolicy, "aggressive": AggressivePolicy}
    if name not in policies:
        names = sorted([*policies, "past-future"])
        raise ValueError(f"admission_policy must be one of {names}, got {name!r}")
    return policies[name]()
