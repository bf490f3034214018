"""RMSNorm and residual-add + RMSNorm, one program per token row.

Layout: x, residual [T, H] (last dim contiguous, rows may be strided), weight [H] in x's
dtype. Semantics match engine/layers/norm.py: the residual sum is rounded to x's dtype first
(it is the next layer's residual), statistics are fp32 over that rounded sum, the normalised
value is rounded to x's dtype and then multiplied by the weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    pdl_enabled,
    pdl_launch_options,
)
from raylight.kernels._common_jit import pdl_release, pdl_wait

MAX_WARPS = 16  # warps per row: one per 512 columns up to this


@triton.jit
def _rmsnorm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    stride_x,
    stride_res,
    stride_out,
    stride_res_out,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    if USE_PDL:  # the weight (never written by a step) loads before the wait
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        pdl_wait(USE_PDL)
        pdl_release(USE_PDL)  # after the wait: see kernels/_common_jit.py
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        summed = (x + res).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_res_out + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    normed = (x * inv_rms).to(out_ptr.dtype.element_ty).to(tl.float32)
    if not USE_PDL:  # (where the timed build loads it)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (normed * w).to(out_ptr.dtype.element_ty), mask)


def _check_rows(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    check_tensor(name, t, 2, (like.dtype,), "[T, H]")
    if t.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(t.shape)}")
    check_last_dim_contiguous(name, t)


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    res_out: torch.Tensor | None,
    pdl: bool,
) -> None:
    hidden = x.shape[1]
    block = triton.next_power_of_2(hidden)
    num_warps = min(MAX_WARPS, max(1, block // 512))
    res = residual if residual is not None else x
    res_o = res_out if res_out is not None else out
    use_pdl = pdl_enabled(pdl, x)
    _rmsnorm_kernel[(x.shape[0],)](
        x, res, weight, out, res_o,
        x.stride(0), res.stride(0), out.stride(0), res_o.stride(0),
        hidden, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, USE_PDL=use_pdl, num_warps=num_warps,
        **pdl_launch_options(use_pdl),
    )  # fmt: skip


def _check_common(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_tensor("x", x, 2, FLOAT_DTYPES, "[T, H]")
    check_last_dim_contiguous("x", x)
    check_tensor("weight", weight, 1, FLOAT_DTYPES, "[H]")
    if weight.shape[0] != x.shape[1] or weight.stride(0) != 1:
        raise ValueError(
            f"weight: expected a contiguous [{x.shape[1]}], got shape {tuple(weight.shape)}"
        )


def rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """x: [T, H] -> weight * norm(x) as [T, H] in x's dtype. pdl: launch with programmatic
    dependent launch (kernels/_common.py)."""
    _check_common(x, weight)
    check_same_device(x=x, weight=weight)
    out = torch.empty_like(x) if out is None else out
    _check_rows("out", out, x)
    check_same_device(x=x, out=out)
    if x.shape[0]:
        _launch(x, None, weight, eps, out, None, pdl)
    return out


def fused_add_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    inplace: bool = False,
    pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (weight * norm(x + residual), x + residual), like RMSNorm.forward(x, residual).

    With inplace=True the normed output overwrites x and the sum overwrites residual (both
    are returned); each row is read fully before it is written, so this is safe.
    """
    _check_common(x, weight)
    _check_rows("residual", residual, x)
    check_same_device(x=x, residual=residual, weight=weight)
    out = x if inplace else torch.empty_like(x)
    res_out = residual if inplace else torch.empty_like(residual)
    if x.shape[0]:
        _launch(x, residual, weight, eps, out, res_out, pdl)
    return out, res_out


def rmsnorm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, same as engine/layers/norm.py: returns (normed, new residual)."""
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype), x
