"""Synthetic, seeded request traces for the scheduling simulator.

Lengths come from one random stream and arrival times from another, so one seed gives the same
requests at every rate (a rate sweep compares like with like). Every request has a user cap
(`max_tokens`, what admission sees) above its true output length (what the simulator produces).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EOS = 0  # the simulator's stop token: sampled as a request's last (true-length) token
FILLER = 1  # every other sampled token
_VOCAB = 32000


@dataclass(frozen=True)
class Workload:
    """N requests in arrival order. Request i's prompt is `tokens[start[i]:start[i] +
    prompt_len[i]]`; requests of one conversation share a token sequence, so a later turn's
    prompt extends an earlier one (answers inside it are FILLER ... EOS, as the simulator
    generates them). Invariant: 1 <= output_len <= max_tokens <= max_model_len - prompt_len."""

    name: str
    rate: float  # requests per second
    arrival: np.ndarray  # float64 [N], ascending
    prompt_len: np.ndarray  # int64 [N]
    output_len: np.ndarray  # int64 [N]: true output length
    max_tokens: np.ndarray  # int64 [N]: the user's cap
    start: np.ndarray  # int64 [N]: offset of the prompt in `tokens`
    tokens: np.ndarray  # int32 [total]
    max_model_len: int

    def __len__(self) -> int:
        return len(self.arrival)

    def prompt(self, i: int) -> list[int]:
        s = int(self.start[i])
        return self.tokens[s : s + int(self.prompt_len[i])].tolist()


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n)


def _single_turn(
    name: str,
    lengths: tuple[np.ndarray, np.ndarray, np.ndarray],
    arrival: np.ndarray,
    rate: float,
    max_model_len: int,
    rng: np.random.Generator,
) -> Workload:
    prompt, out, cap = (np.asarray(a, dtype=np.int64) for a in lengths)
    start = np.zeros(len(prompt), dtype=np.int64)
    np.cumsum(prompt[:-1], out=start[1:])
    tokens = rng.integers(2, _VOCAB, int(prompt.sum()), dtype=np.int32)
    return Workload(name, rate, arrival, prompt, out, cap, start, tokens, max_model_len)


def _poisson(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    return np.cumsum(rng.exponential(1.0 / rate, n))


def _chat_lengths(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """ShareGPT-like: prompts ~ lognormal mean 250 (4..4096), outputs mean 200 (1..2000)."""
    prompt = np.clip(_lognormal(rng, 250, 1.0, n), 4, 4096).astype(np.int64)
    out = np.clip(_lognormal(rng, 200, 1.0, n), 1, 2000).astype(np.int64)
    return prompt, out, np.full(n, 2048, dtype=np.int64)


def sharegpt(n: int, rate: float, seed: int) -> Workload:
    """Chat traffic with ShareGPT-like lengths, Poisson arrivals, max_tokens 2048."""
    lengths = _chat_lengths(n, np.random.default_rng([seed, 0]))
    arrival = _poisson(n, rate, np.random.default_rng([seed, 1]))
    return _single_turn("sharegpt", lengths, arrival, rate, 8192, np.random.default_rng([seed, 2]))


def bursty(n: int, rate: float, seed: int) -> Workload:
    """ShareGPT-like lengths; gamma inter-arrival gaps with CV 4 (shape 1/16): long quiet spells
    and dense bursts at the same mean rate."""
    lengths = _chat_lengths(n, np.random.default_rng([seed, 0]))
    shape = 1.0 / 16
    gaps = np.random.default_rng([seed, 1]).gamma(shape, 1.0 / (rate * shape), n)
    arrival = np.cumsum(gaps)
    return _single_turn("bursty", lengths, arrival, rate, 8192, np.random.default_rng([seed, 2]))


def reasoning(n: int, rate: float, seed: int) -> Workload:
    """o1-style traces: prompts mean 300 (16..2048), outputs lognormal mean 3000 (64..16000),
    max_tokens 16384."""
    rng = np.random.default_rng([seed, 0])
    prompt = np.clip(_lognormal(rng, 300, 0.8, n), 16, 2048).astype(np.int64)
    out = np.clip(_lognormal(rng, 3000, 0.8, n), 64, 16000).astype(np.int64)
    cap = np.full(n, 16384, dtype=np.int64)
    arrival = _poisson(n, rate, np.random.default_rng([seed, 1]))
    return _single_turn(
        "reasoning", (prompt, out, cap), arrival, rate, 18432, np.random.default_rng([seed, 2])
    )


# Registered by name: (num_requests, rate, seed) -> Workload. multiturn lives in its own module.
WorkloadFactory = Callable[[int, float, int], Workload]


def workload_names() -> tuple[str, ...]:
    return ("sharegpt", "reasoning", "bursty", "multiturn")


def make_workload(name: str, num_requests: int, rate: float, seed: int) -> Workload:
    from raylight.engine.sim.multiturn import multiturn

    factories: dict[str, WorkloadFactory] = {
        "sharegpt": sharegpt,
        "reasoning": reasoning,
        "bursty": bursty,
        "multiturn": multiturn,
    }
    if name not in factories:
        raise ValueError(f"workload must be one of {sorted(factories)}, got {name!r}")
    if num_requests < 1 or rate <= 0:
        raise ValueError("num_requests must be >= 1 and rate > 0")
    return factories[name](num_requests, rate, seed)
