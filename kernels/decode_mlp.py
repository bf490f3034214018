"""The MLP half of a decode layer at batch 1..8 as one kernel: residual add + RMSNorm, the
gate_up projection with SiLU-and-mul, a grid-wide barrier, the down projection.

Why one kernel: at batch 1 the four kernels it replaces (fused_add_rmsnorm, gate_up,
silu_and_mul, down) are streams over weights, and each kernel boundary leaves the memory idle
for 2-4 us (the launch, the first loads' latency, the last programs' tail), however few bytes
the kernel moves (benchmarks/decode_variants.py measured it). Here a persistent grid of at most
one program per SM does both projections; between them the programs meet at a barrier in
global memory, and each loads its first down_proj weight tile before it waits there, so the
memory keeps streaming while the slowest program finishes gate_up.

Every program must be resident at once (or the barrier never opens): the launcher never starts
more programs than the device has SMs, and at most one fits per SM by construction (it is the
only kernel running; the step's kernels are stream-ordered). In the interpreter, programs run
one after another, so there the two phases run as two launches without the barrier.

Semantics and roundings are those of the unfused layers (engine/layers/norm.py, activation.py,
linear.py): the residual sum is rounded to x's dtype and is the next residual, the normed row
is rounded before and after the norm weight, gate and up are rounded before SiLU-and-mul, the
activation is rounded, and both products accumulate in fp32 and round once.

Layout: h, residual [M, H] (last dim contiguous), norm_weight [H], gate_up weight [2I, H]
(gate rows then up rows, nn.Linear's layout), down weight [H, I]; returns y [M, H] and the new
residual [M, H].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    interpreting,
)
from raylight.kernels.activation import silu_and_mul_ref
from raylight.kernels.rmsnorm import rmsnorm_ref

MAX_ROWS = 8  # the kernel takes decode batches up to this
# The engine uses it at batch 1 only: at 2 rows it measured 101 us per layer against the
# chain's 92, and at 4 the default grid no longer fits on the SMs at once.
ENGINE_MAX_ROWS = 1


@dataclass(frozen=True, slots=True)
class DecodeMLPConfig:
    """Launch settings. The grid is programs_per_sm programs on each SM; more than one needs
    `cooperative` (CUDA then refuses a grid that cannot be resident at once, which would hang at
    the barrier). Each program owns ceil(I / programs) gate (and up) rows and ceil(H / programs)
    down rows, walked as row groups of *_block_n rows by K chunks of *_block_k."""

    programs_per_sm: int = 4
    gu_block_n: int = 4
    gu_block_k: int = 1024
    d_block_n: int = 4
    d_block_k: int = 1024
    num_warps: int = 2
    num_stages: int = 3
    cooperative: bool = True  # launch as a cooperative grid (CUDA checks co-residency)


# The best of benchmarks/decode_mlp_bench.py's sweep on the H200 at batch 1: 92.0 us per layer
# against 82.3 us of weight bytes (the four-kernel chain: 90.7 us), where one program per SM
# with 4 warps took 132 us (benchmarks/results/h200-2026-12-02-decode-mlp-bench-*.json). Many
# small programs keep more loads in flight than a few wide ones.
DEFAULT_CONFIG = DecodeMLPConfig()


@triton.jit
def _grid_barrier(bar_ptr, num_programs):
    """All programs of the grid meet here. bar_ptr: int32 [2] = arrivals, generation. The last
    to arrive resets the arrivals and then bumps the generation, which the others wait on, so
    the barrier is reusable and always left at zero arrivals."""
    tl.debug_barrier()  # every warp's stores are issued before the release below
    gen = tl.atomic_add(bar_ptr + 1, 0, sem="acquire", scope="gpu")
    arrived = tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu")
    if arrived == num_programs - 1:
        tl.atomic_xchg(bar_ptr, 0, sem="relaxed", scope="gpu")
        tl.atomic_add(bar_ptr + 1, 1, sem="release", scope="gpu")
    else:
        while tl.atomic_add(bar_ptr + 1, 0, sem="acquire", scope="gpu") == gen:
            pass
    tl.debug_barrier()


@triton.jit
def _walk(pid, it, N, K, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step `it` of a program's walk over its ROWS rows of an [N, K] weight: row group
    it // chunks, K chunk it % chunks. Returns the rows, their mask, the columns, their mask,
    whether this is the group's first chunk and (per row) its last."""
    chunks = tl.cdiv(K, BLOCK_K)
    group = it // chunks
    kc = it - group * chunks
    local = group * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = pid * ROWS + local
    n_ok = (local < ROWS) & (rows < N)
    cols = kc * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = cols < K
    last = (local * 0 + kc) == chunks - 1
    return rows, n_ok, cols, k_ok, kc == 0, last


@triton.jit
def _load_w(w_ptr, rows, n_ok, cols, k_ok, K):
    offsets = rows.to(tl.int64)[:, None] * K + cols[None, :]
    return tl.load(w_ptr + offsets, mask=n_ok[:, None] & k_ok[None, :], other=0.0)


@triton.jit
def _first_w(w_ptr, pid, N, K, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):  # fmt: skip
    """The weight tile of step 0: loaded before a barrier (weights are never written)."""
    rows, n_ok, cols, k_ok, _, _ = _walk(pid, 0, N, K, ROWS, BLOCK_N, BLOCK_K)
    return _load_w(w_ptr, rows, n_ok, cols, k_ok, K)


@triton.jit
def _load_rows(ptr, stride, rm, m_ok, cols, k_ok):
    """[BLOCK_M, BLOCK_K] of activations; .cg (L2, not L1): other programs may have written them
    in this launch."""
    offsets = rm[:, None] * stride + cols[None, :]
    return tl.load(ptr + offsets, mask=m_ok[:, None] & k_ok[None, :], other=0.0,
                   cache_modifier=".cg")  # fmt: skip


@triton.jit
def _store_rows(ptr, stride, value, rm, m_ok, rows, row_ok):
    offsets = rm[:, None] * stride + rows[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])


@triton.jit
def _residual_sum(a_ptr, stride_a, b_ptr, stride_b, rm, m_ok, cols, k_ok):
    """a + b in fp32, rounded to a's dtype (it is the next residual), returned in fp32."""
    a = _load_rows(a_ptr, stride_a, rm, m_ok, cols, k_ok)
    b = _load_rows(b_ptr, stride_b, rm, m_ok, cols, k_ok)
    return (a.to(tl.float32) + b.to(tl.float32)).to(a.dtype).to(tl.float32)


@triton.jit
def _dot_rows(x, w):
    """[BLOCK_M, BLOCK_K] x [BLOCK_N, BLOCK_K] -> [BLOCK_M, BLOCK_N], fp32 FMAs."""
    return tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None], 2)


@triton.jit
def _gemv(x_ptr, stride_x, w_ptr, w_first, out_ptr, stride_out, M, N, K, pid,
          ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, STAGES: tl.constexpr):  # fmt: skip
    """out[:, rows] = x W[rows]^T for this program's ROWS rows; step 0's tile is w_first."""
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    rows, n_ok, cols, k_ok, first, last = _walk(pid, 0, N, K, ROWS, BLOCK_N, BLOCK_K)
    acc = _dot_rows(_load_rows(x_ptr, stride_x, rm, m_ok, cols, k_ok), w_first)
    _store_rows(out_ptr, stride_out, acc, rm, m_ok, rows, n_ok & last)
    for it in tl.range(1, GROUPS * tl.cdiv(K, BLOCK_K), num_stages=STAGES):
        rows, n_ok, cols, k_ok, first, last = _walk(pid, it, N, K, ROWS, BLOCK_N, BLOCK_K)
        w = _load_w(w_ptr, rows, n_ok, cols, k_ok, K)
        x = _load_rows(x_ptr, stride_x, rm, m_ok, cols, k_ok)
        acc = tl.where(first, 0.0, acc) + _dot_rows(x, w)
        _store_rows(out_ptr, stride_out, acc, rm, m_ok, rows, n_ok & last)


@triton.jit
def _normed_chunk(a_ptr, stride_a, b_ptr, stride_b, g_ptr, inv_rms, rm, m_ok, cols, k_ok):
    """A chunk of RMSNorm(a + b) with the unfused layer's roundings, in fp32."""
    s = _residual_sum(a_ptr, stride_a, b_ptr, stride_b, rm, m_ok, cols, k_ok)
    g = tl.load(g_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
    normed = (s * inv_rms[:, None]).to(a_ptr.dtype.element_ty).to(tl.float32)
    return (normed * g[None, :]).to(a_ptr.dtype.element_ty)


@triton.jit
def _norm_gemv(a_ptr, stride_a, b_ptr, stride_b, g_ptr, eps, sum_ptr, stride_sum,
               w_ptr, w_first, w_first_up, out_ptr, stride_out, M, N, K, pid,
               ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, NORM_BLOCK: tl.constexpr,
               STAGES: tl.constexpr, GATED: tl.constexpr):  # fmt: skip
    """x = RMSNorm(a + b) (program 0 stores a + b to sum_ptr), then out[:, rows] = x W[rows]^T
    for this program's rows; GATED: W is [2N, K] (gate rows, then up rows) and out is
    silu(gate) * up, gate and up rounded first. Step 0's tiles are w_first (and w_first_up)."""
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, NORM_BLOCK):
        cols = k0 + tl.arange(0, NORM_BLOCK)
        k_ok = cols < K
        s = _residual_sum(a_ptr, stride_a, b_ptr, stride_b, rm, m_ok, cols, k_ok)
        _store_rows(sum_ptr, stride_sum, s, rm, m_ok, cols, k_ok & ((cols * 0 + pid) == 0))
        sum_sq += tl.sum(s * s, axis=1)
    inv_rms = 1.0 / tl.sqrt(sum_sq / K + eps)
    up_offset = N.to(tl.int64) * K
    rows, n_ok, cols, k_ok, first, last = _walk(pid, 0, N, K, ROWS, BLOCK_N, BLOCK_K)
    x = _normed_chunk(a_ptr, stride_a, b_ptr, stride_b, g_ptr, inv_rms, rm, m_ok, cols, k_ok)
    acc = _dot_rows(x, w_first)
    acc_up = acc
    if GATED:
        acc_up = _dot_rows(x, w_first_up)
    _store_rows(out_ptr, stride_out, _epilogue(acc, acc_up, out_ptr, GATED), rm, m_ok, rows,
                n_ok & last)  # fmt: skip
    for it in tl.range(1, GROUPS * tl.cdiv(K, BLOCK_K), num_stages=STAGES):
        rows, n_ok, cols, k_ok, first, last = _walk(pid, it, N, K, ROWS, BLOCK_N, BLOCK_K)
        w = _load_w(w_ptr, rows, n_ok, cols, k_ok, K)
        if GATED:
            w_up = _load_w(w_ptr + up_offset, rows, n_ok, cols, k_ok, K)
        x = _normed_chunk(a_ptr, stride_a, b_ptr, stride_b, g_ptr, inv_rms, rm, m_ok, cols, k_ok)
        acc = tl.where(first, 0.0, acc) + _dot_rows(x, w)
        if GATED:
            acc_up = tl.where(first, 0.0, acc_up) + _dot_rows(x, w_up)
        _store_rows(out_ptr, stride_out, _epilogue(acc, acc_up, out_ptr, GATED), rm, m_ok, rows,
                    n_ok & last)  # fmt: skip


@triton.jit
def _epilogue(acc, acc_up, out_ptr, GATED: tl.constexpr):
    """GATED: silu(gate) * up over gate and up rounded to the output dtype (as the unfused
    projection stores them); else acc."""
    if GATED:
        gate = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        up = acc_up.to(out_ptr.dtype.element_ty).to(tl.float32)
        return gate * tl.sigmoid(gate) * up
    return acc


@triton.jit
def _decode_tail_kernel(
    attn_ptr, wo_ptr, h_ptr, res_ptr, norm_ptr, res_mid_ptr, wgu_ptr, act_ptr, wd_ptr, y_ptr,
    next_norm_ptr, wq_ptr, res_out_ptr, qkv_ptr, bar_ptr,
    M, A, H, I, NQ, eps, next_eps,  # noqa: E741 (I: the intermediate size)
    stride_attn, stride_h, stride_res, stride_res_mid, stride_act, stride_y, stride_res_out,
    stride_qkv,
    BLOCK_M: tl.constexpr, NORM_BLOCK: tl.constexpr,
    O_ROWS: tl.constexpr, O_GROUPS: tl.constexpr,
    GU_ROWS: tl.constexpr, GU_GROUPS: tl.constexpr, GU_BLOCK_N: tl.constexpr,
    GU_BLOCK_K: tl.constexpr,
    D_ROWS: tl.constexpr, D_GROUPS: tl.constexpr, Q_ROWS: tl.constexpr, Q_GROUPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
    DO_O: tl.constexpr, DO_G: tl.constexpr, DO_D: tl.constexpr, DO_Q: tl.constexpr,
    BARRIERS: tl.constexpr,
):  # fmt: skip
    """The phases, each a walk of this program's rows, with a grid barrier between two that
    run in one launch (BARRIERS):
    O: h = attn W_o^T (A inputs, H outputs);
    G: act = silu(gate) * up of RMSNorm(h + res) (program 0 stores res_mid = h + res);
    D: y = act W_down^T;
    Q: qkv = RMSNorm'(y + res_mid) W_qkv^T (NQ outputs; program 0 stores res_out = y + res_mid).
    Each phase's first weight tile loads before its barrier."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if DO_O:
        w0 = _first_w(wo_ptr, pid, H, A, O_ROWS, BLOCK_N, BLOCK_K)
        _gemv(attn_ptr, stride_attn, wo_ptr, w0, h_ptr, stride_h, M, H, A, pid,
              O_ROWS, BLOCK_N, BLOCK_K, O_GROUPS, BLOCK_M, STAGES)  # fmt: skip
    if DO_G:
        w0 = _first_w(wgu_ptr, pid, I, H, GU_ROWS, GU_BLOCK_N, GU_BLOCK_K)
        w0_up = _first_w(wgu_ptr + I.to(tl.int64) * H, pid, I, H, GU_ROWS, GU_BLOCK_N, GU_BLOCK_K)
        if BARRIERS and DO_O:
            _grid_barrier(bar_ptr, nprog)
        _norm_gemv(h_ptr, stride_h, res_ptr, stride_res, norm_ptr, eps, res_mid_ptr,
                   stride_res_mid, wgu_ptr, w0, w0_up, act_ptr, stride_act, M, I, H, pid,
                   GU_ROWS, GU_BLOCK_N, GU_BLOCK_K, GU_GROUPS, BLOCK_M, NORM_BLOCK, STAGES,
                   True)  # fmt: skip
    if DO_D:
        w0 = _first_w(wd_ptr, pid, H, I, D_ROWS, BLOCK_N, BLOCK_K)
        if BARRIERS and DO_G:
            _grid_barrier(bar_ptr, nprog)
        _gemv(act_ptr, stride_act, wd_ptr, w0, y_ptr, stride_y, M, H, I, pid,
              D_ROWS, BLOCK_N, BLOCK_K, D_GROUPS, BLOCK_M, STAGES)  # fmt: skip
    if DO_Q:
        w0 = _first_w(wq_ptr, pid, NQ, H, Q_ROWS, BLOCK_N, BLOCK_K)
        if BARRIERS and DO_D:
            _grid_barrier(bar_ptr, nprog)
        _norm_gemv(y_ptr, stride_y, res_mid_ptr, stride_res_mid, next_norm_ptr, next_eps,
                   res_out_ptr, stride_res_out, wq_ptr, w0, w0, qkv_ptr, stride_qkv, M, NQ, H,
                   pid, Q_ROWS, BLOCK_N, BLOCK_K, Q_GROUPS, BLOCK_M, NORM_BLOCK, STAGES,
                   False)  # fmt: skip


def new_barrier(device: torch.device | str) -> torch.Tensor:
    """The int32 [2] state a decode_mlp launch's barrier needs (arrivals, generation): zeros,
    and left at zero arrivals by every completed launch, so one buffer serves every launch
    that runs after the previous one ended (a layer keeps one)."""
    return torch.zeros(2, dtype=torch.int32, device=device)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check_rows(name: str, t: torch.Tensor, like: torch.Tensor | None, width: int) -> None:
    check_tensor(name, t, 2, FLOAT_DTYPES if like is None else (like.dtype,), "[M, features]")
    check_last_dim_contiguous(name, t)
    if not 1 <= t.shape[0] <= MAX_ROWS:
        raise ValueError(f"{name}: expected 1..{MAX_ROWS} rows, got {t.shape[0]}")
    rows = t.shape[0] if like is None else like.shape[0]
    if tuple(t.shape) != (rows, width):
        raise ValueError(f"{name}: expected shape ({rows}, {width}), got {tuple(t.shape)}")


def _check_weight(name: str, t: torch.Tensor, like: torch.Tensor, shape: tuple[int, ...]) -> None:
    check_tensor(name, t, len(shape), (like.dtype,), str(list(shape)))
    if tuple(t.shape) != shape or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous {list(shape)}, got {tuple(t.shape)}")


def _launch(
    tensors: dict[str, torch.Tensor], sizes: dict[str, int], eps: tuple[float, float],
    phases: str, config: DecodeMLPConfig,
) -> None:
    """Runs `phases` (a substring of "OGDQ") of _decode_tail_kernel: as one launch with barriers
    on the GPU, one launch per phase in the interpreter."""
    t = tensors
    if t["barrier"].dtype != torch.int32 or t["barrier"].shape != (2,):
        raise ValueError(f"barrier: expected new_barrier()'s int32 [2], got {t['barrier'].dtype} "
                         f"{tuple(t['barrier'].shape)}")  # fmt: skip
    check_same_device(**t)
    h = t["h"]
    apart = interpreting(h)
    if config.programs_per_sm < 1 or (config.programs_per_sm > 1 and not config.cooperative):
        raise ValueError(f"config: programs_per_sm > 1 needs cooperative=True, got {config}")
    programs = config.programs_per_sm * (4 if apart else _sm_count(h.device))
    m, a, hidden, inter, nq = h.shape[0], sizes["A"], sizes["H"], sizes["I"], sizes["NQ"]
    rows = {"O": triton.cdiv(hidden, programs), "GU": triton.cdiv(inter, programs),
            "D": triton.cdiv(hidden, programs), "Q": triton.cdiv(nq, programs)}  # fmt: skip
    consts = dict(
        BLOCK_M=triton.next_power_of_2(m), NORM_BLOCK=min(1024, triton.next_power_of_2(hidden)),
        O_ROWS=rows["O"], O_GROUPS=triton.cdiv(rows["O"], config.d_block_n),
        GU_ROWS=rows["GU"], GU_GROUPS=triton.cdiv(rows["GU"], config.gu_block_n),
        GU_BLOCK_N=config.gu_block_n, GU_BLOCK_K=config.gu_block_k,
        D_ROWS=rows["D"], D_GROUPS=triton.cdiv(rows["D"], config.d_block_n),
        Q_ROWS=rows["Q"], Q_GROUPS=triton.cdiv(rows["Q"], config.d_block_n),
        BLOCK_N=config.d_block_n, BLOCK_K=config.d_block_k, STAGES=config.num_stages,
    )  # fmt: skip
    order = ("attn", "wo", "h", "res", "norm", "res_mid", "wgu", "act", "wd", "y", "next_norm",
             "wq", "res_out", "qkv", "barrier")  # fmt: skip
    strides = [t[k].stride(0) for k in ("attn", "h", "res", "res_mid", "act", "y", "res_out",
                                         "qkv")]  # fmt: skip
    args = (*(t[k] for k in order), m, a, hidden, inter, nq, *eps, *strides)
    launch = dict(num_warps=config.num_warps)
    flags = {f"DO_{p}": False for p in "OGDQ"}
    if apart:
        for phase in phases:
            _decode_tail_kernel[(programs,)](*args, **consts, **{**flags, f"DO_{phase}": True},
                                             BARRIERS=False, **launch)  # fmt: skip
        return
    if config.cooperative:
        launch["launch_cooperative_grid"] = True
    on = {**flags, **{f"DO_{p}": True for p in phases}}
    _decode_tail_kernel[(programs,)](*args, **consts, **on, BARRIERS=True, **launch)


def decode_mlp(
    h: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    barrier: torch.Tensor,
    config: DecodeMLPConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (down(silu_and_mul(gate_up(norm(h + residual)))), h + residual) as the unfused
    layers compute them. barrier: new_barrier() on h's device, not shared with a launch that
    may run at the same time. config: None = DEFAULT_CONFIG (read at each call)."""
    config = DEFAULT_CONFIG if config is None else config
    _check_rows("h", h, None, h.shape[1] if h.dim() == 2 else 0)
    hidden = h.shape[1]
    _check_rows("residual", residual, h, hidden)
    inter = gate_up_weight.shape[0] // 2
    _check_weight("norm_weight", norm_weight, h, (hidden,))
    _check_weight("gate_up_weight", gate_up_weight, h, (2 * inter, hidden))
    _check_weight("down_weight", down_weight, h, (hidden, inter))
    y, res_mid = torch.empty_like(h), torch.empty_like(h)
    act = torch.empty((h.shape[0], inter), dtype=h.dtype, device=h.device)
    tensors = dict(attn=h, wo=h, h=h, res=residual, norm=norm_weight, res_mid=res_mid,
                   wgu=gate_up_weight, act=act, wd=down_weight, y=y, next_norm=norm_weight,
                   wq=h, res_out=y, qkv=y, barrier=barrier)  # fmt: skip
    _launch(tensors, dict(A=hidden, H=hidden, I=inter, NQ=hidden), (eps, eps), "GD", config)
    return y, res_mid


def decode_layer_tail(
    attn: torch.Tensor,
    residual: torch.Tensor,
    o_weight: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    barrier: torch.Tensor,
    next_norm_weight: torch.Tensor | None = None,
    next_eps: float = 0.0,
    next_qkv_weight: torch.Tensor | None = None,
    config: DecodeMLPConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A decode layer from its attention output on, in one launch: o_proj, the post-attention
    residual add + RMSNorm, the MLP, and (with next_*) the next layer's residual add + input
    RMSNorm and its qkv projection. Returns (next qkv, the residual after this layer) with
    next_*, else (the MLP's output, the residual after attention), as the unfused layers
    compute them. attn: [M, A]; residual: [M, H]; o_weight: [H, A]; next_qkv_weight: [NQ, H]."""
    config = DEFAULT_CONFIG if config is None else config
    _check_rows("attn", attn, None, attn.shape[1] if attn.dim() == 2 else 0)
    _check_weight("o_weight", o_weight, attn, (o_weight.shape[0], attn.shape[1]))
    hidden = o_weight.shape[0]
    _check_rows("residual", residual, attn, hidden)
    inter = gate_up_weight.shape[0] // 2
    _check_weight("norm_weight", norm_weight, attn, (hidden,))
    _check_weight("gate_up_weight", gate_up_weight, attn, (2 * inter, hidden))
    _check_weight("down_weight", down_weight, attn, (hidden, inter))
    if (next_norm_weight is None) != (next_qkv_weight is None):
        raise ValueError("next_norm_weight and next_qkv_weight: give both or neither")
    m = attn.shape[0]
    new = functools.partial(torch.empty, dtype=attn.dtype, device=attn.device)
    h, res_mid, y, act = new((m, hidden)), new((m, hidden)), new((m, hidden)), new((m, inter))
    nq, phases = hidden, "OGD"
    res_out = qkv = y
    if next_qkv_weight is not None and next_norm_weight is not None:
        _check_weight("next_norm_weight", next_norm_weight, attn, (hidden,))
        nq = next_qkv_weight.shape[0]
        _check_weight("next_qkv_weight", next_qkv_weight, attn, (nq, hidden))
        res_out, qkv, phases = new((m, hidden)), new((m, nq)), "OGDQ"
    tensors = dict(attn=attn, wo=o_weight, h=h, res=residual, norm=norm_weight, res_mid=res_mid,
                   wgu=gate_up_weight, act=act, wd=down_weight, y=y,
                   next_norm=norm_weight if next_norm_weight is None else next_norm_weight,
                   wq=o_weight if next_qkv_weight is None else next_qkv_weight,
                   res_out=res_out, qkv=qkv, barrier=barrier)  # fmt: skip
    sizes = dict(A=attn.shape[1], H=hidden, I=inter, NQ=nq)
    _launch(tensors, sizes, (eps, next_eps), phases, config)
    return (qkv, res_out) if phases == "OGDQ" else (y, res_mid)


def decode_mlp_ref(
    h: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    down_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, the unfused layers' ops and roundings: (y, new residual)."""
    x, res_out = rmsnorm_ref(h, norm_weight, eps, residual)
    gate_up = (x.float() @ gate_up_weight.float().T).to(h.dtype)
    act = silu_and_mul_ref(gate_up)
    return (act.float() @ down_weight.float().T).to(h.dtype), res_out


def decode_layer_tail_ref(
    attn: torch.Tensor,
    residual: torch.Tensor,
    o_weight: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    next_norm_weight: torch.Tensor | None = None,
    next_eps: float = 0.0,
    next_qkv_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, the unfused layers' ops and roundings, as decode_layer_tail returns them."""
    h = (attn.float() @ o_weight.float().T).to(attn.dtype)
    y, res_mid = decode_mlp_ref(h, residual, norm_weight, eps, gate_up_weight, down_weight)
    if next_norm_weight is None or next_qkv_weight is None:
        return y, res_mid
    x, res_out = rmsnorm_ref(y, next_norm_weight, next_eps, res_mid)
    return (x.float() @ next_qkv_weight.float().T).to(attn.dtype), res_out
