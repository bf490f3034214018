"""The per-step tensors the Sampler needs, built from the requests that sample this step.

Runs on the host every step for every sampling request, so the common case (all greedy, no
penalties, no logprobs, no min_tokens) is a few list comprehensions and two tensor copies; each
optional feature costs nothing unless some row uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from raylight.engine.request import Request
from raylight.engine.sampling_params import GREEDY_TEMPERATURE, SamplingParams


@dataclass(slots=True)
class SamplingInputs:
    """One row per request that samples this step; tensors live on the logits' device.

    A `None` tensor means no row uses that feature; where a tensor exists, rows that do not use
    the feature hold a neutral value (top_k 0, top_p 1, min_p 0, penalties 1/0/0).
    """

    temperature: Tensor  # float32 [B]; < GREEDY_TEMPERATURE means greedy
    top_k: Tensor | None  # int64 [B], 0 = off, clamped to V
    top_p: Tensor | None  # float32 [B]
    min_p: Tensor | None  # float32 [B]
    seeds: Tensor  # int64 [B]: request.sample_seed
    counters: Tensor  # int64 [B]: the index of the token being sampled (its PENDING slot)
    repetition_penalty: Tensor | None  # float32 [B]
    presence_penalty: Tensor | None  # float32 [B]
    frequency_penalty: Tensor | None  # float32 [B]
    prompt_token_mask: Tensor | None  # bool [B, V]: token occurs in the prompt
    output_token_counts: Tensor | None  # float32 [B, V]: occurrences in the generated output
    banned_tokens: Tensor | None  # bool [B, V]: must not be sampled (min_tokens not reached)
    max_num_logprobs: int  # max over rows of params.logprobs; -1 when no row wants logprobs
    all_greedy: bool
    max_top_k: int = 0  # max of top_k (<= V), known on the host so topk needs no device sync


def build_sampling_inputs(
    requests: Sequence[Request], vocab_size: int, device: torch.device
) -> SamplingInputs:
    """Gather the sampling parameters and token histories of `requests` into batched tensors."""
    params = [r.params for r in requests]
    temps = [p.temperature for p in params]
    # Called between schedule and update: each request's last output token is its PENDING one.
    counters = [len(r.output_token_ids) - 1 for r in requests]
    all_greedy = max(temps, default=0.0) < GREEDY_TEMPERATURE
    int_rows: list[list[int]] = [[r.sample_seed for r in requests], counters]
    float_rows: list[list[float]] = [temps]

    top_k_row = top_p_row = min_p_row = -1
    max_top_k = 0
    if not all_greedy:
        top_ks = [p.top_k for p in params]
        if max(top_ks) > 0:
            top_ks = [min(k, vocab_size) if k > 0 else 0 for k in top_ks]  # -1 also means off
            max_top_k = max(top_ks)
            top_k_row = len(int_rows)
            int_rows.append(top_ks)
        top_p_row = _append_if_used(float_rows, [p.top_p for p in params], neutral=1.0)
        min_p_row = _append_if_used(float_rows, [p.min_p for p in params], neutral=0.0)
    reps = [p.repetition_penalty for p in params]
    rep_row = _append_if_used(float_rows, reps, neutral=1.0)
    pres_row = _append_if_used(float_rows, [p.presence_penalty for p in params], neutral=0.0)
    freq_row = _append_if_used(float_rows, [p.frequency_penalty for p in params], neutral=0.0)

    ints = torch.tensor(int_rows, dtype=torch.int64).to(device, non_blocking=True)  # [n_int, B]
    floats = torch.tensor(float_rows, dtype=torch.float32).to(device, non_blocking=True)

    shape = (len(requests), vocab_size)
    prompt_mask = counts = None
    if rep_row >= 0:
        rows = [i for i, rp in enumerate(reps) if rp != 1.0]
        prompt_mask = _token_mask(rows, [r.prompt_token_ids for r in requests], shape, device)
    if rep_row >= 0 or pres_row >= 0 or freq_row >= 0:
        rows = [i for i, p in enumerate(params) if p.uses_penalties]
        history = [_known_output(r) if p.uses_penalties else [] for r, p in zip(requests, params)]
        counts = _token_counts(rows, history, shape, device)

    logprobs = [p.logprobs for p in params]
    max_num_logprobs = -1
    if logprobs.count(None) != len(logprobs):
        max_num_logprobs = max(n for n in logprobs if n is not None)

    return SamplingInputs(
        temperature=floats[0],
        top_k=ints[top_k_row] if top_k_row >= 0 else None,
        top_p=floats[top_p_row] if top_p_row >= 0 else None,
        min_p=floats[min_p_row] if min_p_row >= 0 else None,
        seeds=ints[0],
        counters=ints[1],
        repetition_penalty=floats[rep_row] if rep_row >= 0 else None,
        presence_penalty=floats[pres_row] if pres_row >= 0 else None,
        frequency_penalty=floats[freq_row] if freq_row >= 0 else None,
        prompt_token_mask=prompt_mask,
        output_token_counts=counts,
        banned_tokens=_banned_tokens(requests, params, counters, shape, device),
        max_num_logprobs=max_num_logprobs,
        all_greedy=all_greedy,
        max_top_k=max_top_k,
    )


def needs_only_argmax(requests: Sequence[Request]) -> bool:
    """True when the sampled ids are the argmax of the raw logits for every row: all greedy,
    no logprobs, no penalties, no min_tokens ban still active. The runner then skips
    `build_sampling_inputs` and the sampler (no host-to-device copies at all)."""
    for r in requests:
        p = r.params
        if (
            p.temperature >= GREEDY_TEMPERATURE
            or p.logprobs is not None
            or p.uses_penalties
            or p.min_tokens >= len(r.output_token_ids)  # the ban holds below index min_tokens
        ):
            return False
    return True


def _known_output(req: Request) -> list[int]:
    """The output before the token being sampled. Penalties need every earlier token, so a
    batch with penalties is never scheduled ahead of the batch that samples them."""
    if req.num_pending > 1:
        raise RuntimeError("penalties need the tokens of the batch still running")
    return req.output_token_ids[:-1]


def _append_if_used(rows: list[list[float]], values: list[float], neutral: float) -> int:
    """Append `values` as a new row unless all are `neutral`; return its index or -1."""
    if min(values, default=neutral) == neutral == max(values, default=neutral):
        return -1
    rows.append(values)
    return len(rows) - 1


def _linear_index(
    rows: list[int], token_lists: list[list[int]], vocab_size: int, device: torch.device
) -> Tensor:
    """int64 [N]: `row * V + token` for every token of `token_lists[row]`, for row in `rows`."""
    lengths = [len(token_lists[i]) for i in rows]
    flat = np.fromiter(
        chain.from_iterable(token_lists[i] for i in rows), dtype=np.int64, count=sum(lengths)
    )
    linear = np.repeat(np.asarray(rows, dtype=np.int64) * vocab_size, lengths) + flat  # [N]
    return torch.from_numpy(linear).to(device, non_blocking=True)


def _token_mask(
    rows: list[int], token_lists: list[list[int]], shape: tuple[int, int], device: torch.device
) -> Tensor:
    """bool [B, V]: token occurs in `token_lists[row]`, for the rows in `rows` (others False)."""
    index = _linear_index(rows, token_lists, shape[1], device)
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool, device=device)
    return mask.index_fill_(0, index, True).view(shape)


def _token_counts(
    rows: list[int], token_lists: list[list[int]], shape: tuple[int, int], device: torch.device
) -> Tensor:
    """float32 [B, V]: occurrences of each token in `token_lists[row]`, for the rows in `rows`."""
    index = _linear_index(rows, token_lists, shape[1], device)
    counts = torch.zeros(shape[0] * shape[1], dtype=torch.float32, device=device)
    ones = torch.ones(index.shape, dtype=torch.float32, device=device)
    return counts.index_add_(0, index, ones).view(shape)


def _banned_tokens(
    requests: Sequence[Request],
    params: list[SamplingParams],
    counters: list[int],
    shape: tuple[int, int],
    device: torch.device,
) -> Tensor | None:
    """bool [B, V]: the stop ids of rows that have not yet generated `min_tokens` tokens."""
    min_tokens = [p.min_tokens for p in params]
    if max(min_tokens, default=0) == 0:
        return None
    vocab_size = shape[1]
    rows = [i for i, (n, m) in enumerate(zip(counters, min_tokens, strict=True)) if n < m]
    # Ids past the vocabulary can never be sampled, so they need no ban.
    stops = [[t for t in requests[i].stop_token_ids if t < vocab_size] for i in rows]
    linear = [i * vocab_size + t for i, ids in zip(rows, stops, strict=True) for t in ids]
    if not linear:
        return None
    index = torch.tensor(linear, dtype=torch.int64).to(device, non_blocking=True)
    banned = torch.zeros(shape[0] * shape[1], dtype=torch.bool, device=device)
    return banned.index_fill_(0, index, True).view(shape)
