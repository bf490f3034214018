"""Decode attention with the step's rotary, KV store and split merge in one launch.

kernels/decode_attention.py behind kernels/rope_kv_store.py takes three launches per layer for
a decode step (rotary + KV store, the splits, their merge), each a few microseconds of launch
and ramp on a batch-1 step. Here one grid (B, Hk, S) does all three:
- every program (b, g, s) rotates its KV group's query heads in registers (fp32, rounded once
  to q's dtype, as rope_kv_store does);
- the program whose split holds the new token (position seq_lens_kv[b] - 1) rotates that
  token's k for KV head g into the K pool at out_slots[b] and copies its v into the V pool,
  then waits for its own threads (a CTA barrier) before reading the split back through the
  pool like every other position; no other program reads that slot;
- each program writes its fp32 partial, then counts itself done on a per-(b, g) counter; the
  last of the S programs merges the S partials of the group's heads into `out` (one tile of
  heads x splits x head_dim, which caps S: MERGE_TILE) and resets the counter to 0 for the next
  launch (counters: int32 [>= B * Hk], zero before the first launch; launches on one stream
  may share them). One split writes `out` directly; with MERGE_IN_KERNEL off, the split kernel's
  stage 2 merges in a second launch.

Layout and rules are the two kernels': positions [B]; q [B, Hq, D], k and v [B, Hk, D] before
rotary (last dim contiguous, other strides free: views into a fused qkv output); cos, sin
[max_positions, D / 2] fp32; pools [num_slots, Hk, D] in q's dtype or FP8 e4m3 (saturating);
seq_lens_kv[b] = positions[b] + 1 (the new token is the last one), its ReqToToken entry
already written. head_dim must be a power of two (the rotate-half partner of dim d is
d +- D / 2 inside one tile).

Measured on an H200 (Llama-3.1-8B shape, batch 1 after a 1k prompt in an 8k graph bucket;
benchmarks/decode_variants.py, results/h200-2026-12-04-decode-variants-rope-attention*.json):
the decode step's body 3.794 ms with this kernel against 3.899 ms with rope_kv_store and the
two stages; batch-1 TPOT 4.090-4.122 against 4.239 ms. A first version that merged head by
head (a loop of dependent loads in the last program) was slower than the three launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels import decode_attention as split_kernels
from raylight.kernels._common import FP8_KV_DTYPE, pdl_launch_options
from raylight.kernels._common_jit import pdl_release, pdl_wait
from raylight.kernels.attention_checks import check_attention_args, num_sms
from raylight.kernels.decode_attention import (
    LOG2E,
    DecodeTiles,
    _attend_split,
    _decode_stage2,
    _dot_operand,
    _split_range,
    _store_split,
    decode_attention_ref,
    split_kernel_args,
)
from raylight.kernels.kv_store import check_store_args
from raylight.kernels.rope_kv_store import rope_kv_store_ref
from raylight.kernels.rotary import check_rotary_args

# The last split of each KV group merges the group's partials (True), or a second launch does
# (kernels/decode_attention.py's stage 2; benchmarks/decode_variants.py times both).
MERGE_IN_KERNEL = True
# Floats of the in-kernel merge's one tile (a KV group's heads x splits x head_dim; 128
# registers a thread at 4 warps, no spills on sm_90): caps the split count when merging in the
# kernel. Llama-3.1-8B (groups of 4, head_dim 128) on the H200, batch-1 decode step after a
# 1k prompt in an 8k graph bucket (benchmarks/decode_variants.py): 32 splits 3.794 ms, 16
# splits 3.828, the three launches of rope_kv_store + decode_attention 3.899
# (results/h200-2026-12-04-decode-variants-rope-attention.json).
MERGE_TILE = 16384


@triton.jit
def _rotated(x_ptr, rows, row_ok, cos, sin, half, BLOCK_D: tl.constexpr):
    """Rows `rows` [R] of x (contiguous BLOCK_D columns from x_ptr) rotated, fp32 [R, BLOCK_D]:
    [x1 * cos - x2 * sin | x2 * cos + x1 * sin] with cos, sin [1, BLOCK_D] repeating the
    D / 2 frequencies."""
    d = tl.arange(0, BLOCK_D)[None, :]
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    x = tl.load(x_ptr + rows[:, None] + d, mask=row_ok[:, None], other=0.0).to(tl.float32)
    xp = tl.load(x_ptr + rows[:, None] + partner, mask=row_ok[:, None], other=0.0)
    return x * cos + sign * xp.to(tl.float32) * sin


@triton.jit
def _decode_rope_kernel(
    pos_ptr, cos_ptr, sin_ptr, slots_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr,
    v_read_ptr, r2t_ptr, rows_ptr, lens_ptr, mid_o_ptr, mid_lse_ptr, count_ptr, out_ptr,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
    stride_ks, stride_kch, stride_vs, stride_vch, stride_vrs, stride_vrh, stride_r2t,
    stride_ob, stride_oh, qk_scale, group, head_dim, num_splits,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_FP16: tl.constexpr, V_PAIRS: tl.constexpr,
    PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr, USE_PDL: tl.constexpr,
    TO_FP8: tl.constexpr, ONE_SPLIT: tl.constexpr, MERGE: tl.constexpr,
    BLOCK_GM: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    pdl_wait(USE_PDL)
    pdl_release(USE_PDL)  # after the wait: see kernels/_common_jit.py
    seq_len, split_len, start, end = _split_range(lens_ptr, b, split, num_splits, BLOCK_N)

    half = head_dim // 2
    d = tl.arange(0, BLOCK_D)[None, :]
    pos = tl.load(pos_ptr + b).to(tl.int64)
    cos = tl.load(cos_ptr + pos * half + d % half)  # [1, BLOCK_D], fp32
    sin = tl.load(sin_ptr + pos * half + d % half)

    if split == (tl.maximum(seq_len, 1) - 1) // tl.maximum(split_len, 1):  # owns the new token
        slot = tl.load(slots_ptr + b).to(tl.int64)
        one = tl.full([1], 0, tl.int64)
        row_ok = one == 0
        k_new = _rotated(k_ptr + b * stride_kb + kv_head * stride_kh, one, row_ok, cos, sin,
                         half, BLOCK_D)  # fmt: skip
        v_new = tl.load(v_ptr + b * stride_vb + kv_head * stride_vh + d).to(tl.float32)
        if TO_FP8:  # e4m3's finite range (a cast's overflow varies)
            k_new = tl.clamp(k_new, -448.0, 448.0)
            v_new = tl.clamp(v_new, -448.0, 448.0)
        k_dst = k_cache_ptr + slot * stride_ks + kv_head * stride_kch + d
        tl.store(k_dst, k_new.to(k_cache_ptr.dtype.element_ty))
        v_dst = v_cache_ptr + slot * stride_vs + kv_head * stride_vch + d
        tl.store(v_dst, v_new.to(v_cache_ptr.dtype.element_ty))
        tl.debug_barrier()  # this program's loads below read the slot back

    g = tl.arange(0, BLOCK_G)
    heads = kv_head * group + g  # [BLOCK_G] query heads of this KV group
    head_ok = g < group
    q = _rotated(q_ptr + b * stride_qb, heads * stride_qh, head_ok, cos, sin, half, BLOCK_D)
    q = q.to(q_ptr.dtype.element_ty)  # rounded once, as the rotated q of rope_kv_store
    q = _dot_operand(q, DOT_FP32, DOT_FP16)
    row = tl.load(rows_ptr + b).to(tl.int64)
    m_i, l_i, acc_a, acc_b = _attend_split(
        q, k_cache_ptr, v_read_ptr, r2t_ptr, row, kv_head, start, end,
        stride_ks, stride_kch, stride_vrs, stride_vrh, stride_r2t, qk_scale, head_dim,
        BLOCK_G, BLOCK_N, BLOCK_D, EVEN_D, V_PAIRS, PRECISION, NUM_STAGES,
    )  # fmt: skip
    if ONE_SPLIT:
        _store_split(out_ptr + b * stride_ob, stride_oh, None, heads, head_ok, m_i, l_i,
                     acc_a, acc_b, BLOCK_D, V_PAIRS)  # fmt: skip
    else:
        mid = (b * group * tl.num_programs(1) + heads) * num_splits + split  # [BLOCK_G]
        _store_split(mid_o_ptr, BLOCK_D, mid_lse_ptr, mid, head_ok, m_i, l_i, acc_a, acc_b,
                     BLOCK_D, V_PAIRS)  # fmt: skip
        if MERGE:
            tl.debug_barrier()  # every thread's partial stored before the release below
            counter = count_ptr + b * tl.num_programs(1) + kv_head
            done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if done == num_splits - 1:  # the last split of (b, kv_head): merge, reset counter
                _merge_group(mid_o_ptr, mid_lse_ptr, out_ptr + b * stride_ob, stride_oh,
                             (b * group * tl.num_programs(1) + kv_head * group) * num_splits,
                             group, num_splits, kv_head * group, BLOCK_GM, BLOCK_S, BLOCK_D)
                tl.store(counter, 0)


@triton.jit
def _merge_group(
    mid_o_ptr, mid_lse_ptr, out_ptr, stride_oh, base, group, num_splits, head0,
    BLOCK_GM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Heads head0 .. head0 + group - 1 of out (rows stride_oh apart) = their num_splits
    partials (rows base + g * num_splits + s of mid) weighted by their log-sum-exps: the whole
    group's [BLOCK_GM, BLOCK_S, BLOCK_D] partials in one load, from L2 (".cg": other programs of
    this launch wrote them, so no L1 line may serve them)."""
    g = tl.arange(0, BLOCK_GM)[:, None]
    s = tl.arange(0, BLOCK_S)[None, :]
    ok = (g < group) & (s < num_splits)  # [BLOCK_GM, BLOCK_S]
    rows = base + g * num_splits + s
    lse = tl.load(mid_lse_ptr + rows, mask=ok, other=float("-inf"), cache_modifier=".cg")
    d = tl.arange(0, BLOCK_D)[None, None, :]
    parts = tl.load(mid_o_ptr + rows[:, :, None] * BLOCK_D + d, mask=ok[:, :, None], other=0.0,
                    cache_modifier=".cg")  # fmt: skip
    m = tl.max(lse, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty: all weights become 0
    w = tl.exp2(lse - m[:, None])  # [BLOCK_GM, BLOCK_S]
    out = tl.sum(parts * w[:, :, None], axis=1) / tl.maximum(tl.sum(w, axis=1), 1e-30)[:, None]
    dst = out_ptr + (head0 + g) * stride_oh + tl.arange(0, BLOCK_D)[None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=g < group)


def decode_rope_attention(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    max_kv_len: int,
    scale: float,
    counters: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    tiles: DecodeTiles | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """rope_kv_store then decode_attention in one launch: q, k, v [B, ., D] before rotary ->
    out [B, Hq, D]; the pools get the rotated k and v at out_slots. max_kv_len, num_splits,
    tiles and pdl as for decode_attention; counters: int32 [>= B * Hk], all zero (and left
    zero), None: allocated here (a launch captured in a CUDA graph must be given them)."""
    check_rotary_args(positions, q, k, cos, sin)
    check_store_args(k, v, k_cache, v_cache, out_slots)
    out = check_attention_args(q, k_cache, v_cache, req_to_token, req_rows, seq_lens_kv, out)
    batch, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    if not supports_head_dim(head_dim):
        raise ValueError(f"q: head_dim must be a power of two in [16, 256], got {head_dim}")
    group_p2 = triton.next_power_of_2(num_heads // kv_heads)
    if num_splits is None:
        num_splits = split_kernels.choose_num_splits(batch, kv_heads, max_kv_len,
                                                     num_sms(q.device))  # fmt: skip
        if MERGE_IN_KERNEL:
            num_splits = min(num_splits, max_merged_splits(group_p2, head_dim))
    if num_splits < 1:
        raise ValueError(f"num_splits: must be >= 1, got {num_splits}")
    if batch == 0:
        return out
    if counters is None:
        counters = torch.zeros(batch * kv_heads, dtype=torch.int32, device=q.device)
    elif counters.dtype != torch.int32 or counters.numel() < batch * kv_heads:
        raise ValueError(
            f"counters: expected int32 with at least {batch * kv_heads} entries, got "
            f"{counters.dtype} {tuple(counters.shape)}"
        )
    v_read, consts = split_kernel_args(q, k_cache, v_cache, tiles, pdl)
    one_split = num_splits == 1
    mid_shape = (batch, num_heads, num_splits) if not one_split else (1, 1, 1)
    mid_o = torch.empty((*mid_shape, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(mid_shape, dtype=torch.float32, device=q.device)
    block_s = triton.next_power_of_2(num_splits)
    _decode_rope_kernel[(batch, kv_heads, num_splits)](
        positions, cos, sin, out_slots, q, k, v, k_cache, v_cache, v_read,
        req_to_token, req_rows, seq_lens_kv, mid_o, mid_lse, counters, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        v_read.stride(0), v_read.stride(1), req_to_token.stride(0),
        out.stride(0), out.stride(1), scale * LOG2E, num_heads // kv_heads, head_dim,
        num_splits, TO_FP8=k_cache.dtype == FP8_KV_DTYPE, ONE_SPLIT=one_split,
        MERGE=MERGE_IN_KERNEL, BLOCK_GM=group_p2, BLOCK_S=block_s, **consts,
    )  # fmt: skip
    if not one_split and not MERGE_IN_KERNEL:
        use_pdl = consts["USE_PDL"]
        _decode_stage2[(batch, num_heads)](
            mid_o, mid_lse, out, out.stride(0), out.stride(1), num_heads, head_dim, num_splits,
            BLOCK_S=block_s, BLOCK_D=head_dim, USE_PDL=use_pdl, num_warps=4,
            **pdl_launch_options(use_pdl),
        )  # fmt: skip
    return out


def max_merged_splits(group_p2: int, head_dim: int) -> int:
    """The most splits (a power of two) whose partials of one KV group fit the in-kernel merge's
    single tile of MERGE_TILE floats."""
    return max(1, triton.next_power_of_2(MERGE_TILE // (group_p2 * head_dim) + 1) // 2)


def supports_head_dim(head_dim: int) -> bool:
    return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


def decode_rope_attention_ref(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The two references in turn (rope_kv_store_ref, then decode_attention_ref)."""
    q_rot = rope_kv_store_ref(positions, q, k, v, cos, sin, k_cache, v_cache, out_slots)
    return decode_attention_ref(q_rot, k_cache, v_cache, req_to_token, req_rows, seq_lens_kv,
                                scale)  # fmt: skip
