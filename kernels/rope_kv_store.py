"""Rotary embedding fused with the KV store: one program per token rotates its q heads into
q_out, its k heads straight into the K pool at its slot, and copies its v heads into the V
pool (kernels/rotary.py and kernels/kv_store.py in one launch, with no rotated-k round trip).

Layout and rules are theirs: positions [T]; q [T, Hq, D], k and v [T, Hk, D] (last dim
contiguous, other strides free: views into a fused qkv output); cos, sin [max_positions, D / 2]
fp32; k_cache, v_cache [num_slots, Hk, D] in q's dtype or FP8 e4m3 (saturating at +-448);
out_slots [T]. Returns the rotated q (a new tensor); the pools are written in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import FP8_KV_DTYPE, pdl_enabled, pdl_launch_options
from raylight.kernels._common_jit import pdl_release, pdl_wait
from raylight.kernels.kv_store import _store_one, check_store_args, store_kv_ref
from raylight.kernels.rotary import (
    _cos_sin,
    _rotate_heads,
    check_rotary_args,
    rotary_blocks,
    rotary_embedding_ref,
)


@triton.jit
def _rope_kv_store_kernel(
    pos_ptr, cos_ptr, sin_ptr, slots_ptr,
    q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh,
    stride_kcs, stride_kch, stride_vcs, stride_vch,
    q_heads, k_heads, half, head_dim,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HV: tl.constexpr,
    BLOCK_D: tl.constexpr, TO_FP8: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0).to(tl.int64)
    pdl_wait(USE_PDL)  # positions and slots may come from the previous step's kernels
    pdl_release(USE_PDL)  # after the wait: see kernels/_common_jit.py
    slot = tl.load(slots_ptr + tok).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cos_ptr, sin_ptr, tok, half, BLOCK_HALF)
    _rotate_heads(q_ptr, q_out_ptr, stride_qt, stride_qh, stride_qot, stride_qoh, tok, tok,
                  q_heads, cos, sin, half, BLOCK_H, BLOCK_HALF)  # fmt: skip
    _rotate_heads(k_ptr, k_cache_ptr, stride_kt, stride_kh, stride_kcs, stride_kch, tok, slot,
                  k_heads, cos, sin, half, BLOCK_H, BLOCK_HALF, TO_FP8)  # fmt: skip
    _store_one(v_ptr, v_cache_ptr, stride_vt, stride_vh, stride_vcs, stride_vch, tok, slot,
               k_heads, head_dim, BLOCK_HV, BLOCK_D, TO_FP8)  # fmt: skip


def rope_kv_store(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
    pdl: bool = False,
) -> torch.Tensor:
    """Rotated q [T, Hq, D]; k rotated and v stored at out_slots of the pools. pdl: launch
    with programmatic dependent launch (kernels/_common.py)."""
    check_rotary_args(positions, q, k, cos, sin)
    check_store_args(k, v, k_cache, v_cache, out_slots)
    q_out = torch.empty_like(q)
    if q.shape[0] == 0:
        return q_out
    head_dim = q.shape[2]
    half = head_dim // 2
    block_half, block_h = rotary_blocks(half, max(q.shape[1], k.shape[1]))
    block_d = triton.next_power_of_2(head_dim)
    block_hv = max(1, min(triton.next_power_of_2(k.shape[1]), 4096 // block_d))
    use_pdl = pdl_enabled(pdl, q)
    _rope_kv_store_kernel[(q.shape[0],)](
        positions, cos, sin, out_slots, q, k, v, q_out, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        q_out.stride(0), q_out.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        q.shape[1], k.shape[1], half, head_dim,
        BLOCK_H=block_h, BLOCK_HALF=block_half, BLOCK_HV=block_hv, BLOCK_D=block_d,
        TO_FP8=k_cache.dtype == FP8_KV_DTYPE, USE_PDL=use_pdl, num_warps=4,
        **pdl_launch_options(use_pdl),
    )  # fmt: skip
    return q_out


def rope_kv_store_ref(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
) -> torch.Tensor:
    """The two references in turn. The kernel rounds rotated k once, from fp32, into the
    pool's dtype; this rounds it into q's dtype first (the same when the pool has q's dtype)."""
    q_rot, k_rot = rotary_embedding_ref(positions, q, k, cos, sin)
    store_kv_ref(k_rot, v, k_cache, v_cache, out_slots)
    return q_rot
