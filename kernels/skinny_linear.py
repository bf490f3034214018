"""y = x W^T (+ b) for a few rows of x: the decode-step linear layers at small batch.

At batch 1..8 a linear layer is a stream over W: every weight byte is read once and used for a
handful of multiply-adds, so the kernel's only job is to keep enough loads in flight to reach
the memory's bandwidth. cuBLAS picks tile shapes made for compute-bound GEMMs and, at M = 1,
stays about 8-10% under the copy bandwidth (GPU.md); this kernel gives each program a strip of
BLOCK_N output features, walks K in BLOCK_K chunks with software-pipelined loads, and reduces
at the end.

Two inner products, chosen per device, shape and M by `choose_config` (skinny_linear_table.py)
from a table that benchmarks/skinny_sweep.py measures and writes to
skinny_linear_configs/<device>.json:
- "fma": x and the W tile multiplied elementwise in fp32 and summed over K (no tensor cores).
- "dot": `tl.dot` with x padded to 16 rows (tensor cores; the padding costs nothing here).

Layout: x [M, K] (last dim contiguous), W [N, K] row-major (nn.Linear's layout), b [N];
y [M, N] in x's dtype, accumulated in fp32 and rounded once, like cuBLAS.

The decode layer's neighbours can run inside it (constexpr flags, one kernel): an RMSNorm of x
as the prologue (x's sum of squares is gathered from the same loads, 1 / rms applied to the
fp32 sums at the end), SiLU-and-mul of a [gate | up] weight and a residual add as epilogues.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    check_dim,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    interpreting,
    pdl_enabled,
    pdl_launch_options,
)
from raylight.kernels._common_jit import pdl_release, pdl_wait
from raylight.kernels.activation import silu_and_mul_ref
from raylight.kernels.rmsnorm import rmsnorm_ref
from raylight.kernels.skinny_linear_table import (
    DEFAULT_CONFIG,
    SkinnyConfig,
    choose_config,
    gated_tiles,
)

MAX_ROWS = 8  # beyond this, the layers call cuBLAS (compute starts to matter)


@triton.jit
def _tile_product(acc, x, w, USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] += x [BLOCK_M, BLOCK_K] @ w [BLOCK_N, BLOCK_K]^T, fp32."""
    if USE_DOT:
        if DOT_IN_FP32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
        else:
            acc += tl.dot(x, tl.trans(w))
    else:
        prod = x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        acc += tl.sum(prod, axis=2)
    return acc


@triton.jit
def _k_step(acc, acc_up, sum_sq, x, w, w_up, g_ptrs, k_ok,
            USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr, NORM: tl.constexpr,
            GATED: tl.constexpr):  # fmt: skip
    """One BLOCK_K step: with NORM, x's sum of squares accumulates and x is scaled by the norm
    weight (rounded to x's dtype, as the unfused norm rounds its output); with GATED the up
    rows' product accumulates beside the gate rows'."""
    if NORM:
        xf = x.to(tl.float32)
        sum_sq += tl.sum(xf * xf, axis=1)
        g = tl.load(g_ptrs, mask=k_ok, other=0.0).to(tl.float32)
        x = (xf * g[None, :]).to(x.dtype)
    acc = _tile_product(acc, x, w, USE_DOT, DOT_IN_FP32)
    if GATED:
        acc_up = _tile_product(acc_up, x, w_up, USE_DOT, DOT_IN_FP32)
    return acc, acc_up, sum_sq


@triton.jit
def _skinny_linear_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    g_ptr,
    res_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    stride_rm,
    eps,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    EVEN_K: tl.constexpr,
    STAGES: tl.constexpr,
    USE_PDL: tl.constexpr,
    NORM: tl.constexpr = False,
    GATED: tl.constexpr = False,
    RESIDUAL: tl.constexpr = False,
):
    """y[:, n] for BLOCK_N output features n; N counts outputs (GATED: W has 2N rows, gate
    rows then up rows, and y = silu(gate) * up). NORM: x is RMS-normalized with weight g first
    (the per-row 1 / rms is applied to the fp32 sums at the end). RESIDUAL: y += res."""
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    n_ok = rn < N
    m_ok = rm < M
    # Rows past N read row 0 instead of being masked: the loads stay unmasked (vectorized) and
    # those columns are never stored.
    rn_read = tl.where(n_ok, rn, 0).to(tl.int64)
    w_ptrs = w_ptr + rn_read[:, None] * stride_wn + rk[None, :]
    up_offset = N.to(tl.int64) * stride_wn  # GATED: the up rows sit N rows below the gate rows
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
    g_ptrs = g_ptr + rk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    w_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=w_ptr.dtype.element_ty)  # GATED: the up tile
    k_begin = 0
    if USE_PDL:
        # The first weight tile (weights are never written by a step) loads before waiting for
        # the previous kernel, so its memory latency overlaps that kernel's tail; x after.
        k_ok = rk < K
        if EVEN_K:
            w = tl.load(w_ptrs)
            if GATED:
                w_up = tl.load(w_ptrs + up_offset)
        else:
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
            if GATED:
                w_up = tl.load(w_ptrs + up_offset, mask=k_ok[None, :], other=0.0)
        pdl_wait(USE_PDL)
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc, acc_up, sum_sq = _k_step(acc, acc_up, sum_sq, x, w, w_up, g_ptrs, k_ok,
                                      USE_DOT, DOT_IN_FP32, NORM, GATED)  # fmt: skip
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        k_begin = BLOCK_K
    # The loads are written out here and above rather than in a helper: a helper changed the
    # tensor-core build's SASS against the timed kernel (register allocation and scheduling).
    for k0 in tl.range(k_begin, K, BLOCK_K, num_stages=STAGES):
        k_ok = (k0 + rk) < K
        if EVEN_K:
            w = tl.load(w_ptrs)
            if GATED:
                w_up = tl.load(w_ptrs + up_offset)
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        else:
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
            if GATED:
                w_up = tl.load(w_ptrs + up_offset, mask=k_ok[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc, acc_up, sum_sq = _k_step(acc, acc_up, sum_sq, x, w, w_up, g_ptrs, k_ok,
                                      USE_DOT, DOT_IN_FP32, NORM, GATED)  # fmt: skip
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
    # The next kernel may launch once every program has streamed its weights (kernels/
    # _common_jit.py: releasing earlier lets waiting programs crowd out this grid's later waves).
    pdl_release(USE_PDL)
    if NORM:
        inv_rms = 1.0 / tl.sqrt(sum_sq / K + eps)
        acc *= inv_rms[:, None]
        acc_up *= inv_rms[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(b_ptr + N + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_mask = m_ok[:, None] & n_ok[None, :]
    if GATED:
        # As kernels/activation.py: gate and up rounded to y's dtype first, as the unfused
        # projection stores them.
        gate = acc.to(y_ptr.dtype.element_ty).to(tl.float32)
        up = acc_up.to(y_ptr.dtype.element_ty).to(tl.float32)
        acc = gate * tl.sigmoid(gate) * up
    if RESIDUAL:
        res = tl.load(res_ptr + rm[:, None] * stride_rm + rn[None, :], mask=y_mask, other=0.0)
        acc = acc.to(y_ptr.dtype.element_ty).to(tl.float32) + res.to(tl.float32)
    y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


def check_fused_linear_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    gated: bool,
    residual: torch.Tensor | None,
    out: torch.Tensor | None,
) -> int:
    """Checks a small-batch linear call's arguments past x and weight's own (as skinny_linear
    and kernels/row_gemv.py take them); returns N, the outputs per row."""
    m, k = x.shape
    rows = weight.shape[0]
    check_dim("weight", weight, 1, k, "K, the input features")
    if gated and rows % 2:
        raise ValueError(f"weight: gated needs an even number of rows (gate | up), got {rows}")
    n = rows // 2 if gated else rows
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_tensor("bias", bias, 1, (x.dtype,), "[N]")
        check_dim("bias", bias, 0, rows, "the weight's rows")
        tensors["bias"] = bias
    if norm_weight is not None:
        check_tensor("norm_weight", norm_weight, 1, (x.dtype,), "[K]")
        check_dim("norm_weight", norm_weight, 0, k, "K, the input features")
        check_last_dim_contiguous("norm_weight", norm_weight)
        tensors["norm_weight"] = norm_weight
    for name, t in (("residual", residual), ("out", out)):
        if t is not None:
            check_tensor(name, t, 2, (x.dtype,), "[M, N]")
            if tuple(t.shape) != (m, n):
                raise ValueError(f"{name}: expected shape {(m, n)}, got {tuple(t.shape)}")
            check_last_dim_contiguous(name, t)
            tensors[name] = t
    check_same_device(**tensors)
    return n


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: SkinnyConfig | None = None,
    pdl: bool = False,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gated: bool = False,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] (M <= MAX_ROWS), weight [N, K], bias [N] or None -> y [M, N] in x's dtype.

    Fused variants for the decode layer (engine/models/llama.py, forward_fused), each replacing a
    kernel launch: `norm_weight` [K]: y = rmsnorm(x) W^T, x being the residual stream;
    `gated`: weight [2I, K] holds gate rows then up rows and y [M, I] = silu(gate) * up;
    `residual` [M, N]: y += residual. `out` [M, N] receives y (it may be `residual` itself).
    pdl: launch with programmatic dependent launch (kernels/_common.py); the first weight tile
    is then read before waiting for the previous kernel."""
    check_tensor("x", x, 2, FLOAT_DTYPES, "[M, K]")
    check_tensor("weight", weight, 2, (x.dtype,), "[N, K]")
    check_last_dim_contiguous("x", x)
    if not weight.is_contiguous():
        raise ValueError(f"weight: must be contiguous [N, K], got strides {weight.stride()}")
    m, k = x.shape
    rows = weight.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"x: at most {MAX_ROWS} rows (use F.linear above that), got {m}")
    n = check_fused_linear_args(x, weight, bias, norm_weight, gated, residual, out)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0 or n == 0:
        return y
    if k == 0:
        ref = skinny_linear_ref(x, weight, bias, norm_weight=norm_weight, eps=eps, gated=gated,
                                residual=residual)  # fmt: skip
        return y.copy_(ref)
    cfg = config or choose_config(m, rows, k) or DEFAULT_CONFIG
    if x.dtype == torch.float32 and cfg.use_dot:  # tl.dot would round fp32 operands to tf32
        cfg = SkinnyConfig(False, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages)
    block_n, block_k = gated_tiles(cfg) if gated else (cfg.block_n, cfg.block_k)
    block_m = 16 if cfg.use_dot else triton.next_power_of_2(m)
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    use_pdl = pdl_enabled(pdl, x)
    _skinny_linear_kernel[(triton.cdiv(n, block_n),)](
        x,
        weight,
        bias if bias is not None else weight,
        y,
        norm_weight if norm_weight is not None else weight,
        residual if residual is not None else y,
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        residual.stride(0) if residual is not None else 0,
        eps,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        USE_DOT=cfg.use_dot,
        DOT_IN_FP32=interpreting(x) and x.dtype != torch.float32,
        EVEN_K=k % block_k == 0,
        STAGES=cfg.num_stages,
        USE_PDL=use_pdl,
        NORM=norm_weight is not None,
        GATED=gated,
        RESIDUAL=residual is not None,
        num_warps=cfg.num_warps,
        **pdl_launch_options(use_pdl),
    )
    return y


def skinny_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    gated: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: the unfused layers' ops and roundings (RMSNorm as engine/layers/norm.py,
    the product in fp32 rounded once to x's dtype, SiLU-and-mul and the residual add in fp32
    over rounded inputs)."""
    if norm_weight is not None:
        x = rmsnorm_ref(x, norm_weight, eps)[0]
    b = None if bias is None else bias.float()
    y = F.linear(x.float(), weight.float(), b).to(x.dtype)
    if gated:
        y = silu_and_mul_ref(y)
    if residual is not None:
        y = (y.float() + residual.float()).to(x.dtype)
    return y
