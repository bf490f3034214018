"""Top-p (nucleus) cut-off per row without sorting the vocabulary.

Top-p keeps, in the order (value descending, token id ascending), the shortest prefix of a row
whose probability reaches top_p: token i stays iff the mass of the tokens before it is < top_p.
With P(t) the mass of the values strictly above t, that set is every value above a cut-off tau
plus the first `keep_ties` (by token id) of the values equal to tau, where tau is the smallest
value with P(tau) < top_p and keep_ties = ceil((top_p - P(tau)) / p(tau)) (>= 1).

The kernel finds tau by a radix select over the values' 32-bit order-preserving keys, weighted
by probability: one program per row makes a softmax pass (max, sum of exps), then 8 passes of
4 bits each; every pass sums the probability of the in-range values per 4-bit digit (16
buckets) and keeps the lowest bucket whose mass above stays < top_p. Each pass reads the row
once (from L2 where the rows in flight fit), so a 128k vocabulary costs 9 reads per row, not a
segmented sort of the whole batch. Sums run in fp32 in block order: a token whose mass before
it is within float rounding of top_p may fall on either side (as with the sorted cumsum).

Layout: values float32 [B, V] (last dim contiguous; -inf allowed, NaN not), top_p float32 [B]
(>= 1 keeps every token). Outputs: tau float32 [B], keep_ties int32 [B]; `apply_top_p_cut`
masks a row with them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from raylight.kernels._common import check_last_dim_contiguous, check_tensor

_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _order_keys(v):
    """float32 -> uint32 whose unsigned order is the float order (-0 counted as +0)."""
    v = tl.where(v == 0.0, 0.0, v)
    bits = v.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) == 1
    return tl.where(negative, ~bits, bits | 0x80000000)


@triton.jit
def _key_to_float(key):
    bits = tl.where((key >> 31) == 1, key ^ 0x80000000, ~key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _top_p_cut_kernel(
    values_ptr, top_p_ptr, tau_ptr, ties_ptr, stride_row, vocab,
    BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    base = values_ptr + row * stride_row
    top_p = tl.load(top_p_ptr + row)
    cols = tl.arange(0, BLOCK)
    if top_p >= 1.0:
        tl.store(tau_ptr + row, float("-inf"))
        tl.store(ties_ptr + row, vocab)
        return
    # Softmax statistics: running max and sum of exp2((v - max) * log2 e).
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, vocab, BLOCK):
        v = tl.load(base + start + cols, mask=start + cols < vocab, other=float("-inf"))
        m_new = tl.maximum(m, v)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp2((m - safe) * _LOG2E) + tl.exp2((v - safe) * _LOG2E)
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(s * tl.exp2((m - row_max) * _LOG2E), axis=0)
    inv_total = 1.0 / total

    digits = tl.arange(0, 16).to(tl.uint32)
    hi_mask = tl.zeros([], tl.uint32)  # key bits decided so far
    hi_val = tl.zeros([], tl.uint32)
    mass_above = tl.zeros([], tl.float32)  # P(values above the current key range)
    for pass_idx in tl.static_range(8):
        shift = 28 - 4 * pass_idx
        # Per-lane partial sums, reduced across the program once per pass.
        partial = tl.zeros([BLOCK, 16], tl.float32)
        for start in range(0, vocab, BLOCK):
            ok = start + cols < vocab
            v = tl.load(base + start + cols, mask=ok, other=float("-inf"))
            p = tl.exp2((v - row_max) * _LOG2E) * inv_total  # 0 for -inf
            key = _order_keys(v)
            in_range = ok & ((key & hi_mask) == hi_val)
            digit = (key >> shift) & 15
            hit = in_range[:, None] & (digit[:, None] == digits[None, :])  # [BLOCK, 16]
            partial += tl.where(hit, p[:, None], 0.0)
        hist = tl.sum(partial, axis=0)
        # Mass above each bucket (within the range): the buckets with higher digits.
        above = mass_above + (tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0))
        # The lowest non-empty bucket whose mass above stays below top_p holds tau.
        candidate = (above < top_p) & (hist > 0.0)
        chosen = tl.min(tl.where(candidate, digits, 16), axis=0)
        chosen = tl.minimum(chosen, 15)  # unreachable guard (the max's bucket always qualifies)
        mass_above = tl.sum(tl.where(digits == chosen, above, 0.0), axis=0)
        hi_mask = hi_mask | (tl.full([], 15, tl.uint32) << shift)
        hi_val = hi_val | (chosen.to(tl.uint32) << shift)
    tau = _key_to_float(hi_val)
    p_tau = tl.exp2((tau - row_max) * _LOG2E) * inv_total
    ties = tl.where(p_tau > 0.0, tl.ceil((top_p - mass_above) / p_tau), vocab)
    ties = tl.minimum(tl.maximum(ties, 1.0), vocab)
    tl.store(tau_ptr + row, tau)
    tl.store(ties_ptr + row, ties.to(tl.int32))


def top_p_cut(values: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values float32 [B, V], top_p float32 [B] -> (tau float32 [B], keep_ties int32 [B])."""
    check_tensor("values", values, 2, (torch.float32,), "[B, V]")
    check_last_dim_contiguous("values", values)
    check_tensor("top_p", top_p, 1, (torch.float32,), "[B]")
    rows, vocab = values.shape
    if top_p.shape[0] != rows or top_p.device != values.device:
        raise ValueError(f"top_p: expected [{rows}] on {values.device}, got "
                         f"{tuple(top_p.shape)} on {top_p.device}")  # fmt: skip
    tau = torch.empty(rows, dtype=torch.float32, device=values.device)
    ties = torch.empty(rows, dtype=torch.int32, device=values.device)
    if rows == 0:
        return tau, ties
    if vocab == 0:
        raise ValueError("values: empty rows")
    block = min(1024, triton.next_power_of_2(vocab))
    _top_p_cut_kernel[(rows,)](
        values, top_p.contiguous(), tau, ties, values.stride(0), vocab, BLOCK=block,
        num_warps=16,  # sm_90 build: 95 registers, no spills (8 warps: 191)
    )  # fmt: skip
    return tau, ties


def apply_top_p_cut(
    values: torch.Tensor, tau: torch.Tensor, keep_ties: torch.Tensor
) -> torch.Tensor:
    """Masks to -inf every value of a row outside its top-p set: below tau, or equal to tau
    past the first keep_ties such values (by token id). values [B, V] -> a new [B, V]."""
    tau = tau[:, None]
    tied = values == tau  # [B, V]
    rank = tied.to(torch.int32).cumsum(dim=1)  # 1-based rank among the row's ties
    keep = (values > tau) | (tied & (rank <= keep_ties[:, None]))
    return values.masked_fill(~keep, -math.inf)


def mass_before_ref(values: torch.Tensor) -> torch.Tensor:
    """float64 [B, V]: the probability of the tokens before each token in the order (value
    descending, token id ascending), row by row in plain Python."""
    out = torch.zeros(values.shape, dtype=torch.float64)
    for b in range(values.shape[0]):
        v = values[b].double().cpu()
        probs = torch.softmax(v, dim=0).tolist()
        mass = 0.0
        for i in sorted(range(v.shape[0]), key=lambda i: (-float(v[i]), i)):
            out[b, i] = mass
            mass += probs[i]
    return out


def top_p_keep_ref(values: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The kept set by definition: bool [B, V], the tokens whose mass before them (float64) is
    < top_p, every token where top_p >= 1."""
    top_p = top_p.double().cpu()[:, None]
    keep = (mass_before_ref(values) < top_p) | (top_p >= 1.0)
    return keep.to(values.device)
