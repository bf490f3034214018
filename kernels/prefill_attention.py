"""Ragged (nopad) causal prefill / extend attention over the token-level KV pool, GQA.

Layout: q [T, Hq, D] holds the new tokens of B requests back to back, request b owning rows
cu_seqlens_q[b] : cu_seqlens_q[b + 1] (int64 [B + 1]); k_cache, v_cache [num_slots, Hk, D]
with Hq = G * Hk; req_to_token int32 [rows, max_model_len]; req_rows, seq_lens_kv [B]. The
new tokens' K/V are already in the pool: request b's positions [0, seq_lens_kv[b]) are all
read through req_to_token[req_rows[b]], so cached prefixes (prefix-cache hits, earlier
prefill chunks) and the new tokens are one sequence. New token i of request b sits at
position seq_lens_kv[b] - q_len[b] + i and attends to positions <= its own. Every request
must have q_len >= 1 and seq_lens_kv >= q_len (not checked: no host sync).

Flash-attention 2 style: grid (Hq, q blocks, B), heaviest q blocks first; each program keeps
a BLOCK_M x D query tile, walks KV tiles of BLOCK_N gathered slots with an fp32 online
softmax (exp2, scale folded), first the tiles every row sees in full (no mask), then the
diagonal tiles with the causal mask; tiles past the causal limit are skipped. (Rescaling the
output only when a row maximum grows by > 2^8, FlashAttention-4's trick, measured 3-6% slower
on an H200 at every size and tiling: ed2080b, results/h200-2026-12-02-prefill-lazy-rescale-*.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import INDEX_DTYPES, check_tensor, interpreting
from raylight.kernels.attention_checks import check_attention_args

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tiles(
    acc, m_i, l_i, q, q_pos, k_ptr, v_ptr, slot_row_ptr, stride_ks, stride_vs, lo, hi, kv_len,
    qk_scale, head_dim,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    for start in range(lo, hi, BLOCK_N):
        pos = start + n
        if MASKED:
            slot = tl.load(slot_row_ptr + pos, mask=pos < kv_len, other=0).to(tl.int64)
            kv_mask = (pos[:, None] < kv_len) & (d[None, :] < head_dim)
        else:
            slot = tl.load(slot_row_ptr + pos).to(tl.int64)
            kv_mask = d[None, :] < head_dim
        k_ptrs = k_ptr + slot[:, None] * stride_ks + d[None, :]
        v_ptrs = v_ptr + slot[:, None] * stride_vs + d[None, :]
        if EVEN_D and not MASKED:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        k = k.to(q.dtype)  # fp32 when interpreting; from an FP8 pool (to fp16); else a no-op
        v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N], unscaled
        if MASKED:
            visible = (pos[None, :] <= q_pos[:, None]) & (pos[None, :] < kv_len)
            s = tl.where(visible, s, float("-inf"))
        # qk_scale > 0, so max(s) * qk_scale is the scaled maximum and the scale joins the
        # subtraction in one FMA per score (no separate multiply over the tile).
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, r2t_ptr, rows_ptr, cu_ptr, lens_ptr,
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh,
    stride_r2t, qk_scale, group, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_FP16: tl.constexpr, PRECISION: tl.constexpr,
    HEADS_FASTEST: tl.constexpr,
):  # fmt: skip
    if HEADS_FASTEST:  # grid (Hq, q blocks, B): neighbouring programs share a q block
        head = tl.program_id(0)
        m_block = tl.num_programs(1) - 1 - tl.program_id(1)  # long causal rows start first
    else:  # grid (q blocks, Hq, B): neighbouring programs share a head and its K/V
        head = tl.program_id(1)
        m_block = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    q_start = tl.load(cu_ptr + b).to(tl.int64)
    q_len = (tl.load(cu_ptr + b + 1) - q_start).to(tl.int32)
    m0 = m_block * BLOCK_M
    if m0 >= q_len:
        return
    kv_len = tl.load(lens_ptr + b).to(tl.int32)
    prefix = kv_len - q_len
    m = m0 + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    q_mask = (m[:, None] < q_len) & (d[None, :] < head_dim)
    q_rows = q_start + m
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + d[None, :],
                mask=q_mask, other=0.0)  # fmt: skip
    if DOT_FP32:
        q = q.to(tl.float32)
    elif DOT_FP16:  # an FP8 pool: K/V convert to fp16 exactly, in one instruction per pair
        q = q.to(tl.float16)
    q_pos = prefix + m

    kv_head = head // group
    k_base = k_ptr + kv_head * stride_kh
    v_base = v_ptr + kv_head * stride_vh
    slot_row = r2t_ptr + tl.load(rows_ptr + b).to(tl.int64) * stride_r2t
    # Keys below prefix + m0 + 1 are visible to every row of this block: no mask needed.
    full_end = ((prefix + m0 + 1) // BLOCK_N) * BLOCK_N
    causal_end = tl.minimum(kv_len, prefix + m0 + BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc, m_i, l_i = _attend_tiles(
        acc, m_i, l_i, q, q_pos, k_base, v_base, slot_row, stride_ks, stride_vs, 0, full_end,
        kv_len, qk_scale, head_dim, False, BLOCK_N, BLOCK_D, EVEN_D, PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_tiles(
        acc, m_i, l_i, q, q_pos, k_base, v_base, slot_row, stride_ks, stride_vs, full_end,
        causal_end, kv_len, qk_scale, head_dim, True, BLOCK_N, BLOCK_D, EVEN_D, PRECISION,
    )  # fmt: skip
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=q_mask)  # fmt: skip


def choose_blocks(head_dim: int, max_q_len: int, interp: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) by heuristics (no autotuning: it is broken
    in the interpreter and costs seconds per shape on a GPU). Checked by compiling for sm_90
    without a GPU: no register spills, K/V tiles double-buffered with cp.async, wgmma."""
    if interp:
        return 32, 16, 4, 1
    if max_q_len <= 64:
        return 64, 64, 4, 2
    if head_dim <= 128:
        # H200, one causal sequence of scattered slots (benchmarks/kernel_sweep.py, results/
        # h200-2026-12-01-kernel-sweep-prefill*.json): 128 x 64 tiles, 4 warps, 4 stages are
        # the best of 11-14 settings at 4k (0.388 ms, 44% of the bf16 GEMM rate; 128 x 128 / 8
        # warps 0.409) and at 16k (5.49 ms, 50%; 3 stages 5.53, 128 x 128 / 8 warps 6.09); at
        # 1k, 128 x 128 / 8 warps take 0.040 ms against their 0.050 (FP8 pools: 0.041 / 0.055).
        return (128, 64, 4, 4) if max_q_len >= 4096 else (128, 128, 8, 3)
    return 64, 32, 8, 2


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    max_q_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    blocks: tuple[int, int] | None = None,
    heads_fastest: bool = True,
) -> torch.Tensor:
    """q: [T, Hq, D] -> out [T, Hq, D], causal over each request's cached + new K/V.

    max_q_len must be >= every request's q_len (it sizes the grid); blocks=(BLOCK_M, BLOCK_N)
    overrides the heuristic (tests use it to cover several tilings). heads_fastest orders the
    grid with the query heads varying fastest (every head of a q block runs at once); False runs
    all q blocks of a head together (a wave reads fewer heads' K/V: less L2 traffic).
    """
    check_tensor("cu_seqlens_q", cu_seqlens_q, 1, INDEX_DTYPES, "[B + 1]")
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0 or (batch > 0 and cu_seqlens_q.stride(0) != 1):
        raise ValueError(f"cu_seqlens_q: expected a contiguous [B + 1], got {cu_seqlens_q.shape}")
    out = check_attention_args(q, k_cache, v_cache, req_to_token, req_rows, seq_lens_kv, out,
                               batch=batch)  # fmt: skip
    if cu_seqlens_q.device != q.device:
        raise ValueError(f"cu_seqlens_q: expected device {q.device}, got {cu_seqlens_q.device}")
    if max_q_len < 0:
        raise ValueError(f"max_q_len: must be >= 0, got {max_q_len}")
    if batch == 0 or max_q_len == 0 or q.shape[0] == 0:
        return out
    interp = interpreting(q)
    head_dim = q.shape[2]
    block_m, block_n, num_warps, num_stages = choose_blocks(head_dim, max_q_len, interp)
    if blocks is not None:
        block_m, block_n = blocks
    heads, kv_heads = q.shape[1], k_cache.shape[1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    # FP8 pools with a 16-bit q: fp16 dots (e4m3 -> fp16 is exact and cheaper than -> bf16;
    # q's bf16 -> fp16 is exact below 65504), as decode_attention's fp16_dot.
    fp16_dot = k_cache.element_size() == 1 and q.element_size() == 2
    m_blocks = triton.cdiv(max_q_len, block_m)
    grid = (heads, m_blocks, batch) if heads_fastest else (m_blocks, heads, batch)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, req_to_token, req_rows, cu_seqlens_q, seq_lens_kv,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
        req_to_token.stride(0), scale * LOG2E, heads // kv_heads, head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, EVEN_D=block_d == head_dim,
        DOT_FP32=interp and not fp16_dot, DOT_FP16=fp16_dot,
        PRECISION="ieee" if interp or q.dtype == torch.float32 else "tf32",
        HEADS_FASTEST=heads_fastest, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Plain torch, request by request, fp32 math, explicit causal mask."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_cache.shape[1]
    for b in range(cu_seqlens_q.shape[0] - 1):
        lo, hi, n = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(seq_lens_kv[b])
        slots = req_to_token[int(req_rows[b]), :n].long()
        k = k_cache[slots].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v_cache[slots].float().repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[lo:hi].float() * scale, k)
        q_pos = torch.arange(n - (hi - lo), n, device=q.device)
        visible = torch.arange(n, device=q.device)[None, :] <= q_pos[:, None]  # [q, k]
        p = s.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", p, v).to(q.dtype)
    return out
