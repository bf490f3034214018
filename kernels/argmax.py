"""Row-wise argmax of logits [B, V]: the greedy sampler's only reduction.

torch's argmax reduces a row in one thread block, which over a 128k vocabulary at batch 1 takes
about 40 us on an H100 (more than the rest of sampling). Here stage 1, grid (B, C), finds the
max and its first index in each of C chunks of a row; stage 2, grid (B,), picks the first chunk
holding the row's max. Ties resolve to the lowest index and NaN counts as the largest value, as
in torch.argmax.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import FLOAT_DTYPES, check_last_dim_contiguous, check_tensor

CHUNK = 4096


@triton.jit
def _argmax_stage1(x_ptr, val_ptr, idx_ptr, stride_x, vocab, num_chunks, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < vocab, other=float("-inf"))
    x = x.to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # NaN wins, as in torch (reported as +inf here)
    best = tl.max(x, axis=0)
    # First index holding the chunk's max (a masked tail never holds it unless all are -inf,
    # and then index `chunk * BLOCK` is still in range).
    first = tl.min(tl.where(x == best, cols, 2147483647), axis=0)
    tl.store(val_ptr + row * num_chunks + chunk, best)
    tl.store(idx_ptr + row * num_chunks + chunk, first)


@triton.jit
def _argmax_stage2(val_ptr, idx_ptr, out_ptr, num_chunks, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    ok = c < num_chunks
    vals = tl.load(val_ptr + row * num_chunks + c, mask=ok, other=float("-inf"))
    idx = tl.load(idx_ptr + row * num_chunks + c, mask=ok, other=2147483647)
    best = tl.max(vals, axis=0)
    first = tl.min(tl.where(ok & (vals == best), idx, 2147483647), axis=0)
    tl.store(out_ptr + row, first.to(tl.int64))


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, V] (last dim contiguous) -> int64 [B], the first index of each row's max."""
    check_tensor("x", x, 2, FLOAT_DTYPES, "[B, V]")
    check_last_dim_contiguous("x", x)
    rows, vocab = x.shape
    if vocab == 0:
        raise ValueError("x: argmax of an empty row")
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0:
        return out
    block = min(CHUNK, triton.next_power_of_2(vocab))
    chunks = triton.cdiv(vocab, block)
    vals = torch.empty((rows, chunks), dtype=torch.float32, device=x.device)
    idx = torch.empty((rows, chunks), dtype=torch.int32, device=x.device)
    _argmax_stage1[(rows, chunks)](x, vals, idx, x.stride(0), vocab, chunks, BLOCK=block,
                                   num_warps=8 if block >= 2048 else 4)  # fmt: skip
    _argmax_stage2[(rows,)](vals, idx, out, chunks, BLOCK_C=triton.next_power_of_2(chunks))
    return out


def argmax_rows_ref(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=-1)
