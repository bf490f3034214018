"""Synthetic workloads for `raylight bench serve`: what each request asks for, and when it comes.

Datasets (all drawn from a seeded `numpy.random.Generator`, so a seed gives the same workload):

- ``random``: input lengths uniform on the integers
  ``[int(input_len * (1 - range_ratio)), int(input_len * (1 + range_ratio))]``, output lengths
  likewise around ``output_len`` (both at least 1), as vLLM's ``--random-range-ratio``.
- ``sharegpt-synthetic``: a ShareGPT-like mix of lengths without downloading ShareGPT.
  Input lengths are lognormal with median 250 tokens and sigma 1.0 (``exp(N(ln 250, 1.0))``),
  outputs lognormal with median 200 and sigma 0.8; both rounded and clipped to [4, 1024].
  The medians and spread are close to vLLM's filtered ShareGPT-V3 (inputs ~ 220, outputs ~ 200
  tokens on average, long right tails). ``--input-len``/``--output-len`` do not apply.

Prompts: for ``/v1/completions`` a list of token ids drawn uniformly from ``[0, vocab_size)``,
so the server sees exactly ``prompt_len`` tokens; for ``/v1/chat/completions`` ``prompt_len``
random common English words (about one token each; the chat template adds a few more, and the
server's ``usage.prompt_tokens`` is what the metrics count when it is reported).

Arrivals: gaps between requests are Gamma(shape=burstiness, scale=1 / (rate * burstiness)),
whose mean is 1 / rate; burstiness 1 is a Poisson process (exponential gaps), below 1 burstier,
above 1 more even. An infinite rate sends everything at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DATASETS = ("random", "sharegpt-synthetic")

# (median, sigma) of the lognormal lengths, and the clip range, of `sharegpt-synthetic`.
SHAREGPT_INPUT = (250.0, 1.0)
SHAREGPT_OUTPUT = (200.0, 0.8)
SHAREGPT_CLIP = (4, 1024)

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part"
).split()


@dataclass(frozen=True, slots=True)
class SampledRequest:
    """One request of a workload. `prompt` is token ids (completions) or text (chat)."""

    prompt: list[int] | str
    prompt_len: int
    output_len: int


def _uniform_lengths(
    center: int, range_ratio: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    low = max(1, int(center * (1 - range_ratio)))
    high = max(low, int(center * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=n)


def _lognormal_lengths(
    median: float, sigma: float, clip: tuple[int, int], n: int, rng: np.random.Generator
) -> np.ndarray:
    lengths = np.rint(rng.lognormal(math.log(median), sigma, size=n)).astype(np.int64)
    return np.clip(lengths, clip[0], clip[1])


def _prompt(
    length: int, vocab_size: int, as_text: bool, rng: np.random.Generator
) -> list[int] | str:
    if as_text:
        return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=length))
    return rng.integers(0, vocab_size, size=length).tolist()


def sample_lengths(
    dataset: str, num_prompts: int, input_len: int, output_len: int, range_ratio: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(input lengths, output lengths) of `num_prompts` requests of `dataset`."""
    if dataset == "random":
        inputs = _uniform_lengths(input_len, range_ratio, num_prompts, rng)
        outputs = _uniform_lengths(output_len, range_ratio, num_prompts, rng)
    elif dataset == "sharegpt-synthetic":
        inputs = _lognormal_lengths(*SHAREGPT_INPUT, SHAREGPT_CLIP, num_prompts, rng)
        outputs = _lognormal_lengths(*SHAREGPT_OUTPUT, SHAREGPT_CLIP, num_prompts, rng)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
    return inputs, outputs


def make_workload(
    dataset: str, num_prompts: int, input_len: int, output_len: int, range_ratio: float,
    vocab_size: int, as_text: bool, seed: int,
) -> list[SampledRequest]:  # fmt: skip
    """The requests of a benchmark run, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    inputs, outputs = sample_lengths(dataset, num_prompts, input_len, output_len, range_ratio, rng)
    return [
        SampledRequest(_prompt(int(i), vocab_size, as_text, rng), int(i), int(o))
        for i, o in zip(inputs, outputs)
    ]


def arrival_times(
    num_requests: int, request_rate: float, burstiness: float, rng: np.random.Generator
) -> np.ndarray:
    """Send time of each request in seconds from the start: 0 first, then Gamma-distributed gaps.

    All zero for an infinite rate (everything at once).
    """
    if math.isinf(request_rate):
        return np.zeros(num_requests)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num_requests)
    return np.concatenate(([0.0], np.cumsum(gaps[:-1])))[:num_requests]
