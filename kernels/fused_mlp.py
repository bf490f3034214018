"""The MLP half of a decode layer at batch 1..4 as one kernel without a grid barrier: residual add
+ RMSNorm, gate_up, SiLU-and-mul and down_proj, the down products summed across programs by
fp32 atomic adds.

Why: at batch 1 the four kernels this replaces (fused_add_rmsnorm, gate_up, silu_and_mul,
down) are streams over weights, and each boundary leaves the memory idle for 2-4 us. A
persistent kernel with a grid barrier between gate_up and down cost as much as the boundary it
removed (the barrier waits for the slowest program; kernels/README of 44574c5). Here nothing
waits: program p owns B consecutive rows of the intermediate dimension, computes their gate and
up products over the whole normed input, SiLU-and-mul, and multiplies that B-wide slice of the
activation into the B matching columns of down_proj's weight, adding its partial output
[M, H] into `acc` with atomics. Every program has the same work, so they end together; each
program walks gate_up's K, then down_proj's outputs, each loop software-pipelined.

Semantics are the unfused layers' (engine/layers/norm.py, activation.py, linear.py): the
residual sum is rounded to x's dtype and is the next residual, the normed row is rounded before
and after the norm weight, gate and up are rounded before SiLU-and-mul, the activation is
rounded; the down product accumulates in fp32 and is left in fp32 in `acc` (its consumer rounds
it once: kernels/rmsnorm.py accumulated_add_rmsnorm). The order of the fp32 additions across
programs is not fixed, so on the GPU the last bit of `acc` may differ between runs.

Layout: h, residual [M, H] (last dim contiguous), norm_weight [H], gate_up weight [2I, H] (gate
rows then up rows), down weight [H, I], acc fp32 [M, H] contiguous. H must be a multiple of
block_k and block_n; I is free (the last program's rows are masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
)
from raylight.kernels.activation import silu_and_mul_ref
from raylight.kernels.rmsnorm import rmsnorm_ref

MAX_ROWS = 4
ENGINE_MAX_ROWS = 4  # the decode batches the engine (engine option fused_mlp) runs through it


@dataclass(frozen=True, slots=True)
class FusedMLPConfig:
    """block: intermediate rows per program; gate_up walks K in block_k steps (a gate and an up
    tile [block, block_k] each), down walks its outputs in block_n steps (tiles [block_n,
    block])."""

    block: int = 64
    block_k: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


DEFAULT_CONFIG = FusedMLPConfig()


@triton.jit
def _normed_chunk(h_ptr, stride_h, res_ptr, stride_res, g_ptr, inv_rms, rm, m_ok, cols, k_ok):
    """RMSNorm(h + res)[:, cols] with the unfused layer's roundings, in x's dtype."""
    mask = m_ok[:, None] & k_ok[None, :]
    a = tl.load(h_ptr + rm[:, None] * stride_h + cols[None, :], mask=mask, other=0.0)
    b = tl.load(res_ptr + rm[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
    s = (a.to(tl.float32) + b.to(tl.float32)).to(a.dtype).to(tl.float32)
    g = tl.load(g_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
    normed = (s * inv_rms[:, None]).to(a.dtype).to(tl.float32)
    return (normed * g[None, :]).to(a.dtype)


@triton.jit
def _fused_mlp_kernel(
    h_ptr, res_ptr, g_ptr, wgu_ptr, wd_ptr, acc_ptr, res_out_ptr,
    M, H, I, eps,  # noqa: E741 (I: the intermediate size)
    stride_h, stride_res, stride_acc, stride_res_out,
    BLOCK_M: tl.constexpr, B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    NORM_BLOCK: tl.constexpr, STAGES: tl.constexpr, EVEN_I: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    r0 = pid * B  # this program's intermediate rows: r0 .. r0 + B - 1
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    # The residual sum (program 0 stores it: the next residual) and its sum of squares.
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, H, NORM_BLOCK):
        cols = k0 + tl.arange(0, NORM_BLOCK)
        k_ok = cols < H
        mask = m_ok[:, None] & k_ok[None, :]
        a = tl.load(h_ptr + rm[:, None] * stride_h + cols[None, :], mask=mask, other=0.0)
        b = tl.load(res_ptr + rm[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
        s = (a.to(tl.float32) + b.to(tl.float32)).to(a.dtype)
        tl.store(res_out_ptr + rm[:, None] * stride_res_out + cols[None, :], s,
                 mask=mask & ((cols[None, :] * 0 + pid) == 0))  # fmt: skip
        s = s.to(tl.float32)
        sum_sq += tl.sum(s * s, axis=1)
    inv_rms = 1.0 / tl.sqrt(sum_sq / H + eps)

    i = tl.arange(0, B)  # this program's rows (gate_up)
    j = tl.arange(0, B)  # ... and columns (down)
    kk = tl.arange(0, BLOCK_K)
    nn = tl.arange(0, BLOCK_N)
    row_ok = (r0 + i) < I  # the last program's rows past I (EVEN_I: none)
    # gate_up: acc[:, i] = x . W[r0 + i] (gate) and x . W[I + r0 + i] (up), K in BLOCK_K steps.
    g_ptrs = wgu_ptr + (r0 + i).to(tl.int64)[:, None] * H + kk[None, :]
    up_offset = I.to(tl.int64) * H
    acc_g = tl.zeros([BLOCK_M, B], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, B], dtype=tl.float32)
    for k0 in tl.range(0, H, BLOCK_K, num_stages=STAGES):
        if EVEN_I:
            w_g = tl.load(g_ptrs)
            w_u = tl.load(g_ptrs + up_offset)
        else:
            w_g = tl.load(g_ptrs, mask=row_ok[:, None], other=0.0)
            w_u = tl.load(g_ptrs + up_offset, mask=row_ok[:, None], other=0.0)
        x = _normed_chunk(h_ptr, stride_h, res_ptr, stride_res, g_ptr, inv_rms, rm, m_ok,
                          k0 + kk, (k0 + kk) < H).to(tl.float32)  # fmt: skip
        acc_g += tl.sum(x[:, None, :] * w_g.to(tl.float32)[None, :, :], axis=2)
        acc_u += tl.sum(x[:, None, :] * w_u.to(tl.float32)[None, :, :], axis=2)
        g_ptrs += BLOCK_K
    gate = acc_g.to(h_ptr.dtype.element_ty).to(tl.float32)
    up = acc_u.to(h_ptr.dtype.element_ty).to(tl.float32)
    act = (gate * tl.sigmoid(gate) * up).to(h_ptr.dtype.element_ty).to(tl.float32)
    # down: acc[:, n] += sum_i act[:, i] W_down[n, r0 + i], n in BLOCK_N steps. The column index
    # must stay a plain range (no clamp, no mask under EVEN_I), or the loads lose their vector
    # width: on the H200 a clamped index made this loop read 0.3 TB/s.
    d_ptrs = wd_ptr + nn.to(tl.int64)[:, None] * I + (r0 + j)[None, :]
    for n0 in tl.range(0, H, BLOCK_N, num_stages=STAGES):
        if EVEN_I:
            w_d = tl.load(d_ptrs)
        else:
            w_d = tl.load(d_ptrs, mask=((r0 + j) < I)[None, :], other=0.0)
        y = tl.sum(act[:, None, :] * w_d.to(tl.float32)[None, :, :], axis=2)
        tl.atomic_add(acc_ptr + rm[:, None] * stride_acc + (n0 + nn)[None, :], y,
                      mask=m_ok[:, None], sem="relaxed")  # fmt: skip
        d_ptrs += BLOCK_N * I


def _check_rows(name: str, t: torch.Tensor, dtypes: tuple, shape: tuple[int, int]) -> None:
    check_tensor(name, t, 2, dtypes, "[M, H]")
    check_last_dim_contiguous(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")


def fused_mlp_fits(m: int, hidden: int, config: FusedMLPConfig | None = None) -> bool:
    """Whether fused_mlp takes m rows of a model with this hidden size."""
    cfg = config or DEFAULT_CONFIG
    return 1 <= m <= MAX_ROWS and hidden % cfg.block_k == 0 and hidden % cfg.block_n == 0


def fused_mlp(
    h: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    acc: torch.Tensor,
    config: FusedMLPConfig | None = None,
) -> torch.Tensor:
    """acc += down(silu_and_mul(gate_up(norm(h + residual)))) in fp32; returns h + residual (the
    next residual, a new tensor). acc: fp32 [M, H], usually zeros."""
    cfg = config or DEFAULT_CONFIG
    check_tensor("h", h, 2, FLOAT_DTYPES, "[M, H]")
    m, hidden = h.shape
    if not fused_mlp_fits(m, hidden, cfg):
        raise ValueError(f"h: expected 1..{MAX_ROWS} rows and a hidden size divisible by "
                         f"{cfg.block_k} and {cfg.block_n}, got {tuple(h.shape)}")  # fmt: skip
    _check_rows("h", h, FLOAT_DTYPES, (m, hidden))
    _check_rows("residual", residual, (h.dtype,), (m, hidden))
    _check_rows("acc", acc, (torch.float32,), (m, hidden))
    inter = gate_up_weight.shape[0] // 2 if gate_up_weight.dim() == 2 else 0
    for name, t, shape in (("norm_weight", norm_weight, (hidden,)),
                           ("gate_up_weight", gate_up_weight, (2 * inter, hidden)),
                           ("down_weight", down_weight, (hidden, inter))):  # fmt: skip
        check_tensor(name, t, len(shape), (h.dtype,), str(list(shape)))
        if tuple(t.shape) != shape or not t.is_contiguous() or inter == 0:
            raise ValueError(f"{name}: expected a contiguous {list(shape)}, got "
                             f"{tuple(t.shape)}")  # fmt: skip
    check_same_device(h=h, residual=residual, norm_weight=norm_weight, acc=acc,
                      gate_up_weight=gate_up_weight, down_weight=down_weight)  # fmt: skip
    res_out = torch.empty_like(residual)
    _fused_mlp_kernel[(triton.cdiv(inter, cfg.block),)](
        h, residual, norm_weight, gate_up_weight, down_weight, acc, res_out,
        m, hidden, inter, eps, h.stride(0), residual.stride(0), acc.stride(0), res_out.stride(0),
        BLOCK_M=triton.next_power_of_2(m), B=cfg.block, BLOCK_K=cfg.block_k,
        BLOCK_N=cfg.block_n,
        NORM_BLOCK=min(1024, triton.next_power_of_2(hidden)), STAGES=cfg.num_stages,
        EVEN_I=inter % cfg.block == 0,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return res_out


def fused_mlp_ref(
    h: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    down_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the unfused layers' ops and roundings, the down product left in fp32.
    Returns (down output fp32 [M, H], h + residual)."""
    normed, summed = rmsnorm_ref(h, norm_weight, eps, residual=residual)
    gate_up = F.linear(normed.float(), gate_up_weight.float()).to(h.dtype)
    act = silu_and_mul_ref(gate_up)
    return F.linear(act.float(), down_weight.float()), summed
