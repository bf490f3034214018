"""The batched sampler: logits of the sampling rows in, one token per row (and logprobs) out.

Order of operations, as in vLLM v1 / HF: raw logprobs -> penalties -> banned tokens -> greedy
argmax, or temperature -> top-k -> top-p -> min-p -> Gumbel-max with counter-based noise. Nothing
waits on the device until the single device-to-host copy of the results at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from raylight.engine.sampling_inputs import SamplingInputs
from raylight.engine.sampling_noise import (
    gumbel_from_uniform,
    uniform_noise,
    uniform_noise_at,
)
from raylight.engine.sampling_params import GREEDY_TEMPERATURE
from raylight.kernels.top_p import apply_top_p_cut, top_p_cut


@dataclass(slots=True)
class SamplerOutput:
    """Results of one step, on the CPU; row i belongs to row i of the logits."""

    token_ids: Tensor  # int64 [B]
    logprobs: Tensor | None  # float32 [B]: raw logprob of the sampled token
    top_token_ids: Tensor | None  # int64 [B, max_num_logprobs], by descending logprob
    top_logprobs: Tensor | None  # float32 [B, max_num_logprobs]


@dataclass(slots=True)
class DeviceSample:
    """Results of one step still on the device: `token_ids` for the next step's inputs and
    `packed` for the one copy to the host (`unpack` reads it there)."""

    token_ids: Tensor  # int64 [B]
    packed: Tensor  # int64 [B, 1] (ids only) or [B, 2 + 2N] (see `pack`)
    num_top: int  # N; -1 when `packed` holds only the ids


class Sampler:
    """Stateless: every random draw is a function of (seed, counter, token id).

    top_p_kernel: top-p through kernels/top_p.py (a radix select, no sort) instead of sorting
    each row. Both keep the same tokens (up to float rounding of the mass at the cut), so a row
    samples the same token either way. Off by default until timed on a GPU
    (benchmarks/sampler_bench.py); the sort took 6.6 ms per step at batch 256 on the H200.
    """

    def __init__(self, top_p_kernel: bool = False) -> None:
        self.top_p_kernel = top_p_kernel

    def __call__(self, logits: Tensor, inputs: SamplingInputs) -> SamplerOutput:
        """Samples and copies the results to the host (waits for the device)."""
        sample = self.sample(logits, inputs)
        return unpack(sample.packed.cpu(), sample.num_top)

    def sample(self, logits: Tensor, inputs: SamplingInputs) -> DeviceSample:
        """Samples on the device; nothing waits for it."""
        logits = logits.float()  # [B, V]; may alias the caller's tensor: no in-place ops on it
        raw_logprobs = None
        if inputs.max_num_logprobs >= 0:
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # [B, V]
        logits = apply_penalties(logits, inputs)
        if inputs.banned_tokens is not None:
            logits = logits.masked_fill(inputs.banned_tokens, -math.inf)
        greedy_ids = logits.argmax(dim=-1)  # [B]
        if inputs.all_greedy:
            token_ids = greedy_ids
        else:
            is_greedy = inputs.temperature < GREEDY_TEMPERATURE
            sampled = sample_random(logits, inputs, top_p_kernel=self.top_p_kernel)
            token_ids = torch.where(is_greedy, greedy_ids, sampled)
        return pack(token_ids, raw_logprobs, inputs.max_num_logprobs)


def apply_penalties(logits: Tensor, inputs: SamplingInputs) -> Tensor:
    """Repetition (HF), then frequency and presence (OpenAI) penalties. logits: float32 [B, V].

    Repetition applies to tokens seen in the prompt or the output: positive logits are divided by
    the penalty, the others multiplied. Then `logit -= freq * count + presence * (count > 0)`,
    counting occurrences in the output only. Returns a new tensor when any penalty is set.
    """
    counts = inputs.output_token_counts  # [B, V] or None
    if inputs.repetition_penalty is not None:
        assert counts is not None and inputs.prompt_token_mask is not None
        seen = inputs.prompt_token_mask | (counts > 0)  # [B, V]
        penalty = inputs.repetition_penalty[:, None]  # [B, 1]
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalized, logits)
    if inputs.frequency_penalty is not None:
        assert counts is not None
        logits = logits - inputs.frequency_penalty[:, None] * counts
    if inputs.presence_penalty is not None:
        assert counts is not None
        logits = logits - inputs.presence_penalty[:, None] * (counts > 0)
    return logits


def sample_random(logits: Tensor, inputs: SamplingInputs, top_p_kernel: bool = False) -> Tensor:
    """Temperature, top-k, top-p, min-p, then Gumbel-max. logits: float32 [B, V] -> int64 [B].

    Every path gives each row the same result whatever its batch mates: top-k keeps every token
    tied with the k-th largest (as HF and vLLM do), and top-p orders ties by token id (sorted
    stably, or by the tie count of kernels/top_p.py with `top_p_kernel`). Greedy rows get
    garbage here (the caller overwrites them) but no NaN or inf.
    """
    temperature = torch.where(inputs.temperature < GREEDY_TEMPERATURE, 1.0, inputs.temperature)
    scaled = logits / temperature[:, None]  # [B, V]
    if inputs.top_p is not None and not top_p_kernel:
        # Stable: ties stay in token-id order, so the top-p cut does not depend on the sort.
        values, token_ids = scaled.sort(dim=-1, descending=True, stable=True)  # [B, V]
        values = filter_sorted(values, inputs)
        gumbel = gumbel_from_uniform(uniform_noise_at(inputs.seeds, inputs.counters, token_ids))
        choice = (values + gumbel).argmax(dim=-1, keepdim=True)  # [B, 1]
        return token_ids.gather(1, choice).squeeze(1)
    if inputs.top_k is not None:
        top_values = scaled.topk(inputs.max_top_k, dim=-1).values  # [B, max_top_k], descending
        scaled = _mask_top_k(scaled, top_values, inputs.top_k)
    if inputs.top_p is not None:  # the kernel path (the sorted one returned above)
        scaled = apply_top_p_cut(scaled, *top_p_cut(scaled, inputs.top_p))
    if inputs.min_p is not None:
        scaled = _mask_min_p(scaled, scaled.amax(dim=-1, keepdim=True), inputs.min_p)
    vocab_size = scaled.shape[1]
    gumbel = gumbel_from_uniform(uniform_noise(inputs.seeds, inputs.counters, vocab_size))
    return (scaled + gumbel).argmax(dim=-1)


def filter_sorted(values: Tensor, inputs: SamplingInputs) -> Tensor:
    """Top-k, top-p, min-p on logits sorted in descending order. values: float32 [B, V].

    Top-p keeps the shortest prefix whose probability (after top-k) reaches top_p, so the first
    token always stays. Min-p compares with the first (largest) logit, which survives top-k/p.
    """
    if inputs.top_k is not None:
        values = _mask_top_k(values, values, inputs.top_k)
    if inputs.top_p is not None:
        probs = values.softmax(dim=-1)  # [B, V]
        mass_before = probs.cumsum(dim=-1) - probs  # [B, V], exactly 0 in column 0
        # top_p == 1 keeps everything, even where float32 cumsum rounds the mass to >= 1.
        top_p = torch.where(inputs.top_p < 1.0, inputs.top_p, math.inf)[:, None]  # [B, 1]
        values = values.masked_fill(mass_before >= top_p, -math.inf)
    if inputs.min_p is not None:
        values = _mask_min_p(values, values[:, :1], inputs.min_p)
    return values


def _mask_top_k(values: Tensor, top_values: Tensor, top_k: Tensor) -> Tensor:
    """Drop values below the row's k-th largest; top_k == 0 keeps all.

    values: [B, C]; top_values: [B, >= max k], the row's largest values in descending order.
    """
    kth = top_values.gather(1, (top_k.clamp(min=1) - 1)[:, None])  # [B, 1]
    return values.masked_fill((values < kth) & (top_k > 0)[:, None], -math.inf)


def _mask_min_p(values: Tensor, row_max: Tensor, min_p: Tensor) -> Tensor:
    """Drop tokens with prob < min_p * max prob, i.e. logit < max logit + log(min_p).

    values: [B, C]; row_max: [B, 1]; min_p: [B] (0 gives log 0 = -inf: nothing dropped).
    """
    return values.masked_fill(values < row_max + min_p.log()[:, None], -math.inf)


def pack(token_ids: Tensor, raw_logprobs: Tensor | None, num_top: int) -> DeviceSample:
    """Everything the host needs in one int64 tensor, for one copy. token_ids: int64 [B];
    raw_logprobs: [B, V] or None (then only the ids travel)."""
    if raw_logprobs is None:
        return DeviceSample(token_ids, token_ids[:, None], -1)
    batch = token_ids.shape[0]
    sampled = raw_logprobs.gather(1, token_ids[:, None])  # [B, 1]
    if num_top > 0:
        top_logprobs, top_ids = raw_logprobs.topk(num_top, dim=-1)  # [B, N], descending
    else:
        top_logprobs = raw_logprobs.new_empty((batch, 0))
        top_ids = token_ids.new_empty((batch, 0))
    # Float32 bits ride in int64 columns (sign-extended int32 views), so one copy carries all.
    floats = torch.cat([sampled, top_logprobs], dim=1).view(torch.int32).to(torch.int64)
    packed = torch.cat([token_ids[:, None], top_ids, floats], dim=1)  # [B, 2 + 2N]
    return DeviceSample(token_ids, packed, max(num_top, 0))


def unpack(packed: Tensor, num_top: int) -> SamplerOutput:
    """The host copy of `DeviceSample.packed` -> SamplerOutput."""
    if num_top < 0:
        return SamplerOutput(packed[:, 0].contiguous(), None, None, None)
    floats = packed[:, 1 + num_top :].to(torch.int32).view(torch.float32)  # [B, 1 + N]
    return SamplerOutput(
        token_ids=packed[:, 0].contiguous(),
        logprobs=floats[:, 0].contiguous(),
        top_token_ids=packed[:, 1 : 1 + num_top].contiguous(),
        top_logprobs=floats[:, 1:].contiguous(),
    )
