"""Rotary position embedding (neox layout: rotate halves) for q and k, one program per token.

Layout: positions [T] int32/int64; q [T, Hq, D] and k [T, Hk, D] with the last dim contiguous
(token and head strides are free, so views into a fused qkv projection work); cos, sin
[max_positions, D / 2] fp32 contiguous, as engine/layers/rotary.py builds them (Llama-3
scaling lives in the cache contents). For x = [x1 | x2] the output is
[x1 * cos - x2 * sin | x2 * cos + x1 * sin], computed in fp32 and rounded once to x's dtype.
Positions must lie in [0, max_positions): they are not bounds-checked on the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
)


@triton.jit
def _cos_sin(pos_ptr, cos_ptr, sin_ptr, tok, half, BLOCK_HALF: tl.constexpr):
    """fp32 cos and sin [1, BLOCK_HALF] of token `tok`'s position."""
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cos_ptr + pos * half + d, mask=d < half, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * half + d, mask=d < half, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _rotate_heads(x_ptr, out_ptr, stride_xt, stride_xh, stride_ot, stride_oh, tok, out_row,
                  heads, cos, sin, half, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
                  TO_FP8: tl.constexpr = False):  # fmt: skip
    """Rotates the heads of token `tok` into row `out_row` of out (an FP8 out saturates)."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    for h0 in range(0, heads, BLOCK_H):
        mask = (h0 + h < heads) & (d < half)
        src = x_ptr + tok * stride_xt + (h0 + h) * stride_xh + d
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
        lo = x1 * cos - x2 * sin
        hi = x2 * cos + x1 * sin
        if TO_FP8:
            lo = tl.clamp(lo, -448.0, 448.0)
            hi = tl.clamp(hi, -448.0, 448.0)
        dst = out_ptr + out_row * stride_ot + (h0 + h) * stride_oh + d
        ty = out_ptr.dtype.element_ty
        tl.store(dst, lo.to(ty), mask=mask)
        tl.store(dst + half, hi.to(ty), mask=mask)


@triton.jit
def _rotary_kernel(
    pos_ptr, cos_ptr, sin_ptr,
    q_ptr, k_ptr, q_out_ptr, k_out_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh,
    q_heads, k_heads, half,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cos_ptr, sin_ptr, tok, half, BLOCK_HALF)
    _rotate_heads(q_ptr, q_out_ptr, stride_qt, stride_qh, stride_qot, stride_qoh, tok, tok,
                  q_heads, cos, sin, half, BLOCK_H, BLOCK_HALF)  # fmt: skip
    _rotate_heads(k_ptr, k_out_ptr, stride_kt, stride_kh, stride_kot, stride_koh, tok, tok,
                  k_heads, cos, sin, half, BLOCK_H, BLOCK_HALF)  # fmt: skip


def check_rotary_args(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor) -> None:  # fmt: skip
    check_tensor("positions", positions, 1, INDEX_DTYPES, "[T]")
    check_tensor("q", q, 3, FLOAT_DTYPES, "[T, Hq, D]")
    check_tensor("k", k, 3, (q.dtype,), "[T, Hk, D]")
    check_tensor("cos", cos, 2, (torch.float32,), "[max_positions, D / 2]")
    check_tensor("sin", sin, 2, (torch.float32,), "[max_positions, D / 2]")
    tokens, head_dim = q.shape[0], q.shape[2]
    if head_dim % 2:
        raise ValueError(f"q: head_dim must be even, got shape {tuple(q.shape)}")
    if k.shape[0] != tokens or k.shape[2] != head_dim or positions.shape[0] != tokens:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, positions {tuple(positions.shape)}: "
            "token counts and head_dim must agree"
        )
    for name, c in (("cos", cos), ("sin", sin)):
        if c.shape[1] != head_dim // 2 or not c.is_contiguous() or c.shape != cos.shape:
            raise ValueError(
                f"{name}: expected contiguous [max_positions, {head_dim // 2}] like cos, "
                f"got shape {tuple(c.shape)}"
            )
    check_last_dim_contiguous("q", q)
    check_last_dim_contiguous("k", k)
    check_same_device(positions=positions, q=q, k=k, cos=cos, sin=sin)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns rotated (q, k); with inplace=True they overwrite q and k (and are returned)."""
    check_rotary_args(positions, q, k, cos, sin)
    q_out = q if inplace else torch.empty_like(q)
    k_out = k if inplace else torch.empty_like(k)
    if q.shape[0] == 0:
        return q_out, k_out
    half = q.shape[2] // 2
    block_half, block_h = rotary_blocks(half, max(q.shape[1], k.shape[1]))
    _rotary_kernel[(q.shape[0],)](
        positions, cos, sin, q, k, q_out, k_out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        q.shape[1], k.shape[1], half,
        BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=4,
    )  # fmt: skip
    return q_out, k_out


def rotary_blocks(half: int, heads: int) -> tuple[int, int]:
    """(BLOCK_HALF, BLOCK_H): about 2k elements per tile, enough parallelism per load without
    spilling registers."""
    block_half = triton.next_power_of_2(half)
    return block_half, max(1, min(triton.next_power_of_2(heads), 2048 // block_half))


def rotary_embedding_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: fp32 math, one rounding to the input dtype."""
    c = cos[positions.long()].unsqueeze(1)  # [T, 1, D/2]
    s = sin[positions.long()].unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)
