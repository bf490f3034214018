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
def _residual_sum(h_ptr, res_ptr, rm, cols, stride_h, stride_res, mask):
    """h + residual in fp32, rounded to h's dtype first (it is the next residual)."""
    h = tl.load(h_ptr + rm[:, None] * stride_h + cols[None, :], mask=mask, other=0.0)
    r = tl.load(res_ptr + rm[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
    return (h.to(tl.float32) + r.to(tl.float32)).to(h.dtype)


@triton.jit
def _decode_mlp_kernel(
    h_ptr, res_ptr, norm_ptr, res_out_ptr, wgu_ptr, wd_ptr, act_ptr, y_ptr, bar_ptr,
    M, H, I, eps,  # noqa: E741 (I: the intermediate size)
    stride_h, stride_res, stride_res_out, stride_act, stride_y,
    BLOCK_M: tl.constexpr, NORM_BLOCK: tl.constexpr,
    GU_ROWS: tl.constexpr, GU_BLOCK_N: tl.constexpr, GU_GROUPS: tl.constexpr,
    GU_BLOCK_K: tl.constexpr,
    D_ROWS: tl.constexpr, D_BLOCK_N: tl.constexpr, D_GROUPS: tl.constexpr,
    D_BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, GATE_UP: tl.constexpr, DOWN: tl.constexpr,
):  # fmt: skip
    """GATE_UP: act = silu(gate) * up of the norm of h + residual for this program's GU_ROWS
    rows (program 0 also stores the new residual). DOWN: y = act W_down^T for its D_ROWS rows.
    Both: the barrier between them."""
    pid = tl.program_id(0)
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    dtype = h_ptr.dtype.element_ty
    if GATE_UP:
        sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, H, NORM_BLOCK):
            cols = k0 + tl.arange(0, NORM_BLOCK)
            mask = m_ok[:, None] & (cols < H)[None, :]
            s = _residual_sum(h_ptr, res_ptr, rm, cols, stride_h, stride_res, mask)
            res_out = res_out_ptr + rm[:, None] * stride_res_out + cols[None, :]
            first_program = (tl.zeros_like(cols) + pid) == 0  # only program 0 stores it
            tl.store(res_out, s, mask=mask & first_program[None, :])
            sf = s.to(tl.float32)
            sum_sq += tl.sum(sf * sf, axis=1)
        inv_rms = 1.0 / tl.sqrt(sum_sq / H + eps)
        rn = tl.arange(0, GU_BLOCK_N)
        rk = tl.arange(0, GU_BLOCK_K)
        k_chunks = tl.cdiv(H, GU_BLOCK_K)
        acc_gate = tl.zeros([BLOCK_M, GU_BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_M, GU_BLOCK_N], dtype=tl.float32)
        for it in tl.range(0, GU_GROUPS * k_chunks, num_stages=STAGES):
            group = it // k_chunks
            kc = it - group * k_chunks
            local = group * GU_BLOCK_N + rn
            rows = pid * GU_ROWS + local
            n_ok = (local < GU_ROWS) & (rows < I)
            cols = kc * GU_BLOCK_K + rk
            k_ok = cols < H
            w_off = rows.to(tl.int64)[:, None] * H + cols[None, :]
            w_mask = n_ok[:, None] & k_ok[None, :]
            w_gate = tl.load(wgu_ptr + w_off, mask=w_mask, other=0.0).to(tl.float32)
            w_up = tl.load(wgu_ptr + I * H + w_off, mask=w_mask, other=0.0).to(tl.float32)
            x_mask = m_ok[:, None] & k_ok[None, :]
            s = _residual_sum(h_ptr, res_ptr, rm, cols, stride_h, stride_res, x_mask)
            g = tl.load(norm_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
            normed = (s.to(tl.float32) * inv_rms[:, None]).to(dtype).to(tl.float32)
            x = (normed * g[None, :]).to(dtype).to(tl.float32)
            first = kc == 0
            acc_gate = tl.where(first, 0.0, acc_gate) + tl.sum(x[:, None, :] * w_gate[None], 2)
            acc_up = tl.where(first, 0.0, acc_up) + tl.sum(x[:, None, :] * w_up[None], 2)
            gate = acc_gate.to(dtype).to(tl.float32)
            up = acc_up.to(dtype).to(tl.float32)
            act = (gate * tl.sigmoid(gate) * up).to(dtype)
            last = (rn * 0 + kc) == k_chunks - 1  # the group's last chunk: store it
            a_mask = m_ok[:, None] & (n_ok & last)[None, :]
            tl.store(act_ptr + rm[:, None] * stride_act + rows[None, :], act, mask=a_mask)
    if DOWN:
        rn = tl.arange(0, D_BLOCK_N)
        rk = tl.arange(0, D_BLOCK_K)
        k_chunks = tl.cdiv(I, D_BLOCK_K)
        # Iteration 0 (row group 0, K chunk 0) is peeled: its weight tile loads before the
        # barrier (weights are never written by a step), the activations after it.
        rows = pid * D_ROWS + rn
        n_ok = (rn < D_ROWS) & (rows < H)
        k_ok = rk < I
        w_off = rows.to(tl.int64)[:, None] * I + rk[None, :]
        w = tl.load(wd_ptr + w_off, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if GATE_UP:
            _grid_barrier(bar_ptr, tl.num_programs(0))
        a_ptrs = act_ptr + rm[:, None] * stride_act + rk[None, :]
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0, cache_modifier=".cg")
        acc = tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None], 2)
        last = (rn * 0 + k_chunks) == 1  # a single chunk: it is the last
        y_mask = m_ok[:, None] & (n_ok & last)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_y + rows[None, :], acc.to(dtype), mask=y_mask)
        for it in tl.range(1, D_GROUPS * k_chunks, num_stages=STAGES):
            group = it // k_chunks
            kc = it - group * k_chunks
            local = group * D_BLOCK_N + rn
            rows = pid * D_ROWS + local
            n_ok = (local < D_ROWS) & (rows < H)
            cols = kc * D_BLOCK_K + rk
            k_ok = cols < I
            w_off = rows.to(tl.int64)[:, None] * I + cols[None, :]
            w = tl.load(wd_ptr + w_off, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            a_ptrs = act_ptr + rm[:, None] * stride_act + cols[None, :]
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0,
                        cache_modifier=".cg")  # fmt: skip
            prod = tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None], 2)
            acc = tl.where(kc == 0, 0.0, acc) + prod
            last = (rn * 0 + kc) == k_chunks - 1
            y_mask = m_ok[:, None] & (n_ok & last)[None, :]
            tl.store(y_ptr + rm[:, None] * stride_y + rows[None, :], acc.to(dtype), mask=y_mask)


def new_barrier(device: torch.device | str) -> torch.Tensor:
    """The int32 [2] state a decode_mlp launch's barrier needs (arrivals, generation): zeros,
    and left at zero arrivals by every completed launch, so one buffer serves every launch
    that runs after the previous one ended (a layer keeps one)."""
    return torch.zeros(2, dtype=torch.int32, device=device)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check(h, residual, norm_weight, gate_up_weight, down_weight, barrier) -> None:
    check_tensor("h", h, 2, FLOAT_DTYPES, "[M, H]")
    check_last_dim_contiguous("h", h)
    m, hidden = h.shape
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"h: expected 1..{MAX_ROWS} rows, got {m}")
    check_tensor("residual", residual, 2, (h.dtype,), "[M, H]")
    check_last_dim_contiguous("residual", residual)
    if residual.shape != h.shape:
        raise ValueError(f"residual: expected shape {tuple(h.shape)}, got {tuple(residual.shape)}")
    for name, t, shape in (
        ("norm_weight", norm_weight, (hidden,)),
        ("gate_up_weight", gate_up_weight, (gate_up_weight.shape[0], hidden)),
        ("down_weight", down_weight, (hidden, gate_up_weight.shape[0] // 2)),
    ):
        check_tensor(name, t, len(shape), (h.dtype,), str(list(shape)))
        if tuple(t.shape) != shape or not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous {list(shape)}, got {tuple(t.shape)}")
    if gate_up_weight.shape[0] % 2:
        raise ValueError(f"gate_up_weight: expected an even row count, got {gate_up_weight.shape}")
    if barrier.dtype != torch.int32 or barrier.shape != (2,):
        raise ValueError(f"barrier: expected new_barrier()'s int32 [2], got {barrier.dtype} "
                         f"{tuple(barrier.shape)}")  # fmt: skip
    check_same_device(h=h, residual=residual, norm_weight=norm_weight, barrier=barrier,
                      gate_up_weight=gate_up_weight, down_weight=down_weight)  # fmt: skip


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
    _check(h, residual, norm_weight, gate_up_weight, down_weight, barrier)
    m, hidden = h.shape
    inter = gate_up_weight.shape[0] // 2
    apart = interpreting(h)
    if config.programs_per_sm < 1 or (config.programs_per_sm > 1 and not config.cooperative):
        raise ValueError(f"config: programs_per_sm > 1 needs cooperative=True, got {config}")
    programs = config.programs_per_sm * (4 if apart else _sm_count(h.device))
    gu_rows = triton.cdiv(inter, programs)
    d_rows = triton.cdiv(hidden, programs)
    act = torch.empty((m, inter), dtype=h.dtype, device=h.device)
    y = torch.empty_like(h)
    res_out = torch.empty_like(h)
    consts = dict(
        BLOCK_M=triton.next_power_of_2(m), NORM_BLOCK=min(1024, triton.next_power_of_2(hidden)),
        GU_ROWS=gu_rows, GU_BLOCK_N=config.gu_block_n,
        GU_GROUPS=triton.cdiv(gu_rows, config.gu_block_n), GU_BLOCK_K=config.gu_block_k,
        D_ROWS=d_rows, D_BLOCK_N=config.d_block_n,
        D_GROUPS=triton.cdiv(d_rows, config.d_block_n), D_BLOCK_K=config.d_block_k,
        STAGES=config.num_stages,
    )  # fmt: skip
    args = (
        h, residual, norm_weight, res_out, gate_up_weight, down_weight, act, y, barrier,
        m, hidden, inter, eps,
        h.stride(0), residual.stride(0), res_out.stride(0), act.stride(0), y.stride(0),
    )  # fmt: skip
    launch = dict(num_warps=config.num_warps)
    if apart:
        _decode_mlp_kernel[(programs,)](*args, **consts, GATE_UP=True, DOWN=False, **launch)
        _decode_mlp_kernel[(programs,)](*args, **consts, GATE_UP=False, DOWN=True, **launch)
    else:
        if config.cooperative:
            launch["launch_cooperative_grid"] = True
        _decode_mlp_kernel[(programs,)](*args, **consts, GATE_UP=True, DOWN=True, **launch)
    return y, res_out


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
