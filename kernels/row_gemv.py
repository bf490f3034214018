"""y = x W^T (+ b) for one row of x, streamed by one wave of programs: batch-1 decode linears.

kernels/skinny_linear.py launches a program per BLOCK_N outputs, in several waves; its last wave
leaves SMs idle while the rest finish. Here a fixed grid of `progs_per_sm` programs per SM (one
wave) each owns a contiguous strip of whole output rows (strips differ by at most one row
block), walks it in [BLOCK_N, BLOCK_K] tiles of one software-pipelined loop, row block after
row block, accumulates the fp32 products elementwise and reduces them once per row block.

Measured on an H200 (benchmarks/gemv_chain_probe.py --sweep: 192 settings per shape, 32
launches on distinct weights, results/h200-2026-12-04-gemv-chain-sweep.json; that run timed the
probe's own copy of this loop, without the masks; the best of each shape is in
row_gemv_configs/NVIDIA_H200.json), microseconds against the bytes over the copy bandwidth, and
the layers' choice before (cuBLAS for qkv and gate_up, skinny_linear for o and down): qkv 13.96
/ 11.77 (15.87), o 10.27 / 7.85 (11.21), gate_up 55.31 / 54.94 (56.00), down 29.01 / 27.47
(29.98); a chain of 32 layers of the four, each input the previous output: 108.9 us a layer
against 114.1. This kernel in the engine's batch-1 step (benchmarks/decode_variants.py): 4.094
ms against 4.327 without it (results/h200-2026-12-04-decode-variants-row-gemv.json).

Layout: x [1, K] (last dim contiguous), W [N, K] with a contiguous last dim, b [N]; y [1, N] in
x's dtype, accumulated in fp32 and rounded once.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
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
from raylight.kernels.attention_checks import num_sms
from raylight.kernels.skinny_linear import check_fused_linear_args, skinny_linear_ref
from raylight.kernels.skinny_linear_table import table_file_name


@dataclass(frozen=True, slots=True)
class RowGemvConfig:
    block_n: int
    block_k: int
    num_stages: int
    num_warps: int
    progs_per_sm: int


DEFAULT_CONFIG = RowGemvConfig(4, 512, 4, 2, 4)
# Per GPU model, the best setting of each swept shape, where it beat the layers' kernel
# (benchmarks/gemv_chain_probe.py --sweep --write-table). Shapes and devices not listed keep
# the layers' other kernels.
TABLE_DIR = Path(__file__).parent / "row_gemv_configs"


def table_path(device_name: str) -> Path:
    return TABLE_DIR / table_file_name(device_name)


@functools.lru_cache(maxsize=8)
def load_row_table(device_name: str) -> dict[tuple[int, int], RowGemvConfig]:
    """(N, K) -> setting, from the device's table; empty when the device was never swept."""
    path = table_path(device_name)
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())["entries"]
    return {(e["n"], e["k"]): RowGemvConfig(*e["config"]) for e in entries}


@functools.lru_cache(maxsize=8)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device) -> str:
    """The table's name for a device: the CUDA device's name, else its type ("cpu")."""
    if device.type != "cuda":
        return device.type
    return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())


def choose_row_config(n: int, k: int, device: torch.device) -> RowGemvConfig | None:
    """The measured setting for an [n, k] weight on this device, or None (not measured)."""
    return load_row_table(device_name(device)).get((n, k))


@triton.jit
def _row_gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, g_ptr, res_ptr, N, K, stride_wn, eps,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, STAGES: tl.constexpr, USE_PDL: tl.constexpr,
    NORM: tl.constexpr = False, GATED: tl.constexpr = False, RESIDUAL: tl.constexpr = False,
):  # fmt: skip
    """y[n] for the N outputs (GATED: W has 2N rows, gate rows then up rows, and y =
    silu(gate) * up). NORM: x is RMS-normalized with weight g first (1 / rms applied to the fp32
    sums at the end). RESIDUAL: y += res."""
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    blocks = tl.cdiv(N, BLOCK_N)
    first = pid * blocks // progs  # this program's row blocks: [first, last)
    last = (pid + 1) * blocks // progs
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    k_steps = tl.cdiv(K, BLOCK_K)
    up_offset = N.to(tl.int64) * stride_wn  # GATED: the up rows sit N rows below the gate rows
    pdl_wait(USE_PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    # Only the fused builds carry these through the loop (a dead [BLOCK_N, BLOCK_K] accumulator
    # would still cost its registers): the up rows' products, x's squares for the norm.
    if GATED:
        acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    else:
        acc_up = tl.zeros([1, 1], tl.float32)
    if NORM:
        sum_sq = tl.zeros([BLOCK_K], tl.float32)
    else:
        sum_sq = tl.zeros([1], tl.float32)
    for i in tl.range(0, (last - first) * k_steps, num_stages=STAGES):
        step = i // k_steps
        kt = i - step * k_steps
        rows = (first + step) * BLOCK_N + rn
        # Rows past N read row 0 instead of being masked (the loads stay vectorized); they are
        # never stored.
        rows_read = tl.where(rows < N, rows, 0).to(tl.int64)
        cols = kt * BLOCK_K + rk
        w_ptrs = w_ptr + rows_read[:, None] * stride_wn + cols[None, :]
        k_ok = cols < K
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptr + cols)
            if GATED:
                w_up = tl.load(w_ptrs + up_offset)
        else:
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + cols, mask=k_ok, other=0.0)
            if GATED:
                w_up = tl.load(w_ptrs + up_offset, mask=k_ok[None, :], other=0.0)
        xf = x.to(tl.float32)
        if NORM:  # as the unfused norm rounds its output to x's dtype
            sum_sq += xf * xf
            g = tl.load(g_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
            xf = (xf * g).to(x.dtype).to(tl.float32)
        acc += w.to(tl.float32) * xf[None, :]
        if GATED:
            acc_up += w_up.to(tl.float32) * xf[None, :]
        if kt == k_steps - 1:
            y = tl.sum(acc, axis=1)
            if NORM:
                inv_rms = 1.0 / tl.sqrt(tl.sum(sum_sq, axis=0) / K + eps)
                y *= inv_rms
                sum_sq = tl.zeros([BLOCK_K], tl.float32)
            n_ok = rows < N
            if HAS_BIAS:
                y += tl.load(b_ptr + rows, mask=n_ok, other=0.0).to(tl.float32)
            if GATED:  # gate and up rounded to y's dtype first, as the unfused projection
                up = tl.sum(acc_up, axis=1)
                if NORM:
                    up *= inv_rms
                if HAS_BIAS:
                    up += tl.load(b_ptr + N + rows, mask=n_ok, other=0.0).to(tl.float32)
                gate = y.to(y_ptr.dtype.element_ty).to(tl.float32)
                up = up.to(y_ptr.dtype.element_ty).to(tl.float32)
                y = gate * tl.sigmoid(gate) * up
                acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            if RESIDUAL:
                res = tl.load(res_ptr + rows, mask=n_ok, other=0.0).to(tl.float32)
                y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + res
            tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=n_ok)
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    pdl_release(USE_PDL)  # after the loop: see kernels/_common_jit.py


def row_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: RowGemvConfig | None = None,
    pdl: bool = False,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gated: bool = False,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [1, K], weight [N, K], bias [N] or None -> y [1, N] in x's dtype. pdl: launch with
    programmatic dependent launch (kernels/_common.py).

    The decode layer's fusions, as kernels/skinny_linear.py's (engine option fuse_decode_layers):
    `norm_weight` [K]: y = rmsnorm(x) W^T; `gated`: weight [2I, K] holds gate rows then up rows
    and y [1, I] = silu(gate) * up; `residual` [1, N]: y += residual. `out` [1, N] receives y
    (it may be `residual` itself)."""
    check_tensor("x", x, 2, FLOAT_DTYPES, "[1, K]")
    check_tensor("weight", weight, 2, (x.dtype,), "[N, K]")
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("weight", weight)
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one row [1, K], got shape {tuple(x.shape)}")
    k = weight.shape[1]
    n = check_fused_linear_args(x, weight, bias, norm_weight, gated, residual, out)
    y = torch.empty((1, n), dtype=x.dtype, device=x.device) if out is None else out
    if n == 0:
        return y
    if k == 0:
        ref = row_gemv_ref(x, weight, bias, norm_weight=norm_weight, eps=eps, gated=gated,
                           residual=residual)  # fmt: skip
        return y.copy_(ref)
    cfg = config or DEFAULT_CONFIG
    # Gated: two weight tiles and accumulators, so half the K step keeps the registers.
    block_k = max(16, cfg.block_k // 2) if gated else cfg.block_k
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    blocks = triton.cdiv(n, cfg.block_n)
    use_pdl = pdl_enabled(pdl, x)
    _row_gemv_kernel[(min(blocks, cfg.progs_per_sm * num_sms(x.device)),)](
        x, weight, bias if bias is not None else weight, y,
        norm_weight if norm_weight is not None else weight,
        residual if residual is not None else y, n, k, weight.stride(0), eps,
        HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=block_k,
        EVEN_K=k % block_k == 0, STAGES=cfg.num_stages, USE_PDL=use_pdl,
        NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None,
        num_warps=cfg.num_warps, **pdl_launch_options(use_pdl),
    )  # fmt: skip
    return y


def row_gemv_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gated: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: the unfused layers' ops and roundings, as skinny_linear_ref (the product in
    fp32 rounded once to x's dtype)."""
    return skinny_linear_ref(x, weight, bias, norm_weight=norm_weight, eps=eps, gated=gated,
                             residual=residual)  # fmt: skip
