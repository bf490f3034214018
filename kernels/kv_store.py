"""Scatter of new K/V rows into the token-level KV pool, one program per token.

Layout: k, v [T, kv_heads, D] (last dim contiguous; token/head strides free, so views into a
fused qkv projection work); k_cache, v_cache [num_slots, kv_heads, D] with the last dim
contiguous; out_slots [T] int64 (or int32), each in [0, num_slots). Token t's K/V land in
slot out_slots[t]; values are cast to the cache dtype (into FP8 e4m3 saturating at +-448).
Slot 0 is the pool's dummy: padded lanes (CUDA-graph decode) point there, so duplicates of
slot 0 are allowed and race harmlessly; other slots must be distinct. Slots are not
bounds-checked on the device.
With the fused kernels the engine stores K/V through kernels/rope_kv_store.py instead, which
rotates k straight into the pool; this kernel is the store of the unfused path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import (
    FLOAT_DTYPES,
    FP8_KV_DTYPE,
    FP8_KV_MAX,
    INDEX_DTYPES,
    KV_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
)


@triton.jit
def _store_one(src_ptr, dst_ptr, stride_st, stride_sh, stride_ds, stride_dh, tok, slot,
               heads, head_dim, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
               TO_FP8: tl.constexpr):  # fmt: skip
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    for h0 in range(0, heads, BLOCK_H):
        mask = (h0 + h < heads) & (d < head_dim)
        x = tl.load(src_ptr + tok * stride_st + (h0 + h) * stride_sh + d, mask=mask)
        if TO_FP8:  # clamp to e4m3's finite range (FP8_KV_MAX; the overflow of a cast varies)
            x = tl.clamp(x.to(tl.float32), -448.0, 448.0)
        dst = dst_ptr + slot * stride_ds + (h0 + h) * stride_dh + d
        tl.store(dst, x.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kv_store_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcs, stride_kch, stride_vcs, stride_vch,
    heads, head_dim,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, TO_FP8: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + tok).to(tl.int64)
    _store_one(k_ptr, k_cache_ptr, stride_kt, stride_kh, stride_kcs, stride_kch, tok, slot,
               heads, head_dim, BLOCK_H, BLOCK_D, TO_FP8)  # fmt: skip
    _store_one(v_ptr, v_cache_ptr, stride_vt, stride_vh, stride_vcs, stride_vch, tok, slot,
               heads, head_dim, BLOCK_H, BLOCK_D, TO_FP8)  # fmt: skip


def check_store_args(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, out_slots: torch.Tensor) -> None:  # fmt: skip
    check_tensor("k", k, 3, FLOAT_DTYPES, "[T, kv_heads, D]")
    check_tensor("v", v, 3, FLOAT_DTYPES, "[T, kv_heads, D]")
    check_tensor("k_cache", k_cache, 3, KV_DTYPES, "[num_slots, kv_heads, D]")
    check_tensor("v_cache", v_cache, 3, (k_cache.dtype,), "[num_slots, kv_heads, D]")
    check_tensor("out_slots", out_slots, 1, INDEX_DTYPES, "[T]")
    if v.shape != k.shape or out_slots.shape[0] != k.shape[0]:
        raise ValueError(
            f"k {tuple(k.shape)}, v {tuple(v.shape)}, out_slots {tuple(out_slots.shape)}: "
            "shapes must agree"
        )
    if k_cache.shape != v_cache.shape or k_cache.shape[1:] != k.shape[1:]:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}: expected "
            f"[num_slots, {k.shape[1]}, {k.shape[2]}] each"
        )
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_last_dim_contiguous(name, t)
    check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, out_slots=out_slots)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
) -> None:
    """k_cache[out_slots[t]] = k[t] and v_cache[out_slots[t]] = v[t] for every token t."""
    check_store_args(k, v, k_cache, v_cache, out_slots)
    if k.shape[0] == 0:
        return
    heads, head_dim = k.shape[1], k.shape[2]
    block_d = triton.next_power_of_2(head_dim)
    block_h = max(1, min(triton.next_power_of_2(heads), 4096 // block_d))
    _kv_store_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, out_slots,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        heads, head_dim,
        BLOCK_H=block_h, BLOCK_D=block_d,
        TO_FP8=k_cache.dtype == FP8_KV_DTYPE, num_warps=4,
    )  # fmt: skip


def store_kv_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out_slots: torch.Tensor,
) -> None:
    """Plain torch, same as the torch attention backend's store_kv."""
    store_rows(k_cache, out_slots.long(), k)
    store_rows(v_cache, out_slots.long(), v)


def store_rows(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """cache[slots] = x in the cache's dtype; into FP8 saturating at +-448 (a plain cast of an
    overflow gives NaN), copied as bytes (torch has no FP8 index_copy_ on every device)."""
    if cache.dtype != FP8_KV_DTYPE:
        cache.index_copy_(0, slots, x.to(cache.dtype))
        return
    x = x.float().clamp(-FP8_KV_MAX, FP8_KV_MAX).to(FP8_KV_DTYPE)
    cache.view(torch.uint8).index_copy_(0, slots, x.view(torch.uint8))
