"""SiLU-and-mul over a fused [gate | up] projection.

Layout: x [T, 2 * I] with the gate in columns [0, I) and the up projection in [I, 2I); the
last dim must be contiguous, rows may be strided. Output [T, I] in x's dtype, math in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_tensor,
    pdl_enabled,
    pdl_launch_options,
)
from raylight.kernels._common_jit import pdl_release, pdl_wait


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,
    out_ptr,
    stride_x,
    stride_out,
    inter,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    pdl_wait(USE_PDL)
    pdl_release(USE_PDL)  # after the wait: see kernels/_common_jit.py
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(
    x: torch.Tensor, out: torch.Tensor | None = None, pdl: bool = False
) -> torch.Tensor:
    """x: [T, 2 * I] -> silu(x[:, :I]) * x[:, I:] as [T, I] (written into `out` if given).
    pdl: launch with programmatic dependent launch (kernels/_common.py)."""
    check_tensor("x", x, 2, FLOAT_DTYPES, "[T, 2 * I]")
    check_last_dim_contiguous("x", x)
    if x.shape[1] % 2:
        raise ValueError(f"x: last dim must be even (gate | up), got shape {tuple(x.shape)}")
    tokens, inter = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty((tokens, inter), dtype=x.dtype, device=x.device)
    check_tensor("out", out, 2, (x.dtype,), "[T, I]")
    if tuple(out.shape) != (tokens, inter) or out.device != x.device:
        raise ValueError(
            f"out: expected shape {(tokens, inter)} on {x.device}, "
            f"got {tuple(out.shape)} on {out.device}"
        )
    check_last_dim_contiguous("out", out)
    if tokens == 0:
        return out
    block = min(1024, triton.next_power_of_2(inter))
    grid = (tokens, triton.cdiv(inter, block))
    use_pdl = pdl_enabled(pdl, x)
    _silu_and_mul_kernel[grid](
        x, out, x.stride(0), out.stride(0), inter, BLOCK=block, USE_PDL=use_pdl,
        num_warps=4 if block < 1024 else 8, **pdl_launch_options(use_pdl),
    )  # fmt: skip
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Reference in plain torch (fp32 math, rounded once to x's dtype)."""
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)
