"""Decode attention (one new token per request) over the token-level KV pool, split-K.

Layout: q [B, Hq, D] (last dim contiguous, other strides free); k_cache, v_cache
[num_slots, Hk, D] (last dim contiguous), Hq = G * Hk; req_to_token [rows, max_model_len]
int32 with a contiguous last dim; req_rows [B] and seq_lens_kv [B] int64 (or int32).
Request b attends to positions [0, seq_lens_kv[b]) of row req_rows[b], whose slots are
already written (its own new token included). A row with seq_lens_kv 0 (a padded CUDA-graph
lane) gets zeros; the slots it would read are never touched.

Stage 1, grid (B, Hk, S): program (b, g, s) loads the query heads of KV group g as the M dim
of tl.dot (padded to 16), walks split s of request b's positions in BLOCK_N tiles of gathered
slots, and writes an fp32 partial (acc / l, m + log l) per head. Splits are sized per request
(ceil(seq_len / S), rounded up to BLOCK_N), so short requests leave later splits empty
(lse = -inf). Stage 2, grid (B, Hq), merges the S partials with their log-sum-exp weights.
S is a Python int fixed by (batch, max_kv_len): no host sync, safe in CUDA graphs.
K/V tiles are prefetched with cp.async (tl.range num_stages=3); when head_dim is a power of
two the loads carry no head_dim mask, which would stop that pipelining (checked for sm_90 by
tests/test_kernels_sm90_compile.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from raylight.kernels._common import interpreting, pdl_enabled, pdl_launch_options
from raylight.kernels._common_jit import pdl_release, pdl_wait
from raylight.kernels.attention_checks import check_attention_args, num_sms

LOG2E = 1.4426950408889634


@triton.jit
def _e4m3_to_fp16_over_256(bits):
    """The e4m3 byte in the low 8 bits of `bits` (uint16) -> fp16 holding its value / 256,
    exactly: e4m3's 4 exponent and 3 mantissa bits land in fp16's low exponent and high mantissa
    bits (exponent bias 7 -> 15 is the factor 2^-8; subnormals map to subnormals)."""
    return (((bits & 0x80) << 8) | ((bits & 0x7F) << 7)).to(tl.float16, bitcast=True)


@triton.jit
def _split_range(lens_ptr, b, split, num_splits, BLOCK_N: tl.constexpr):
    """(seq_len, split_len, start, end) of split `split` of request b: splits of
    ceil(seq_len / num_splits) positions rounded up to BLOCK_N, so later splits of a short
    request are empty (start >= end)."""
    seq_len = tl.load(lens_ptr + b).to(tl.int32)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    return seq_len, split_len, start, tl.minimum(start + split_len, seq_len)


@triton.jit
def _dot_operand(q, DOT_FP32: tl.constexpr, DOT_FP16: tl.constexpr):
    """q in the split loop's dot dtype: fp32 in the interpreter (its bf16 dots are wrong), fp16
    against an FP8 pool (DecodeTiles.fp16_dot), else as it is."""
    if DOT_FP32:
        q = q.to(tl.float32)
    elif DOT_FP16:
        q = q.to(tl.float16)
    return q


@triton.jit
def _attend_split(
    q, k_ptr, v_ptr, r2t_ptr, row, kv_head, start, end,
    stride_ks, stride_kh, stride_vs, stride_vh, stride_r2t, qk_scale, head_dim,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    V_PAIRS: tl.constexpr, PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Online softmax of q [BLOCK_G, BLOCK_D] (in its dot dtype) over positions [start, end) of
    ReqToToken row `row`, KV head `kv_head`. Returns (m, l, acc_a, acc_b): the running max and
    sum (log2 domain) [BLOCK_G], and the unnormalised output, as one [BLOCK_G, BLOCK_D] tile in
    acc_a (acc_b a dummy) or with V_PAIRS as the even / odd head dims [BLOCK_G, BLOCK_D // 2]."""
    d = tl.arange(0, BLOCK_D)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    if V_PAIRS:  # v_ptr is int16: element j holds head dims 2j and 2j + 1
        j = tl.arange(0, BLOCK_D // 2)
        acc_a = tl.zeros([BLOCK_G, BLOCK_D // 2], tl.float32)  # head dims 2j
        acc_b = tl.zeros([BLOCK_G, BLOCK_D // 2], tl.float32)  # head dims 2j + 1
    else:
        acc_a = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        acc_b = tl.zeros([1, 1], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for pos0 in tl.range(start, end, BLOCK_N, num_stages=NUM_STAGES):
        pos = pos0 + n
        pos_ok = pos < end
        slot = tl.load(r2t_ptr + row * stride_r2t + pos, mask=pos_ok, other=0).to(tl.int64)
        # A runtime head_dim mask along the contiguous dim would stop cp.async pipelining.
        if EVEN_D:
            kv_mask = pos_ok[:, None]
        else:
            kv_mask = pos_ok[:, None] & (d[None, :] < head_dim)
        k = tl.load(k_ptr + slot[:, None] * stride_ks + kv_head * stride_kh + d[None, :],
                    mask=kv_mask, other=0.0)  # fmt: skip
        if not V_PAIRS:  # (the pairs path loads V after the softmax, below)
            v = tl.load(v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh + d[None, :],
                        mask=kv_mask, other=0.0).to(q.dtype)  # fmt: skip
        k = k.to(q.dtype)  # from an FP8 pool; a no-op when the pool has q's dtype
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N]
        # scale * log2(e) is folded into qk_scale, so the softmax uses exp2.
        s = tl.where(pos_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if V_PAIRS:  # see DecodeTiles.fp8_v_pairs
            v_rows = v_ptr + slot[:, None] * stride_vs + kv_head * stride_vh
            pairs = tl.load(v_rows + j[None, :], mask=pos_ok[:, None], other=0)
            pairs = pairs.to(tl.uint16, bitcast=True)  # [BLOCK_N, BLOCK_D // 2]
            p16 = p.to(tl.float16)
            acc_a = acc_a * alpha[:, None] + tl.dot(p16, _e4m3_to_fp16_over_256(pairs))
            acc_b = acc_b * alpha[:, None] + tl.dot(p16, _e4m3_to_fp16_over_256(pairs >> 8))
        else:
            acc_a = acc_a * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc_a, acc_b


@triton.jit
def _store_split(
    out_ptr, row_stride, lse_ptr, rows, head_ok, m_i, l_i, acc_a, acc_b,
    BLOCK_D: tl.constexpr, V_PAIRS: tl.constexpr,
):  # fmt: skip
    """Writes a split's normalised output (acc / l, in out_ptr's dtype) to rows `rows` [BLOCK_G]
    of out (BLOCK_D columns, rows `row_stride` apart), and its log-sum-exp (log2) to
    lse_ptr[rows] unless lse_ptr is None. An empty split keeps m = -inf and l = 0: its lse is
    -inf (the merge gives it weight 0) and its output 0."""
    if lse_ptr is not None:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.maximum(l_i, 1e-30)), float("-inf"))
        tl.store(lse_ptr + rows, lse, mask=head_ok)
    ty = out_ptr.dtype.element_ty
    if V_PAIRS:
        j = tl.arange(0, BLOCK_D // 2)
        inv = 256.0 / tl.maximum(l_i, 1e-30)[:, None]  # 256: the V tiles held values / 256
        even = out_ptr + rows[:, None] * row_stride + 2 * j[None, :]
        tl.store(even, (acc_a * inv).to(ty), mask=head_ok[:, None])
        tl.store(even + 1, (acc_b * inv).to(ty), mask=head_ok[:, None])
    else:
        d = tl.arange(0, BLOCK_D)
        out = acc_a / tl.maximum(l_i, 1e-30)[:, None]
        tl.store(out_ptr + rows[:, None] * row_stride + d[None, :], out.to(ty),
                 mask=head_ok[:, None])  # fmt: skip


@triton.jit
def _decode_stage1(
    q_ptr, k_ptr, v_ptr, r2t_ptr, rows_ptr, lens_ptr, mid_o_ptr, mid_lse_ptr,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_r2t,
    qk_scale, group, head_dim, num_splits,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_FP16: tl.constexpr, V_PAIRS: tl.constexpr,
    PRECISION: tl.constexpr, NUM_STAGES: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    pdl_wait(USE_PDL)
    pdl_release(USE_PDL)  # after the wait: see kernels/_common_jit.py
    seq_len, split_len, start, end = _split_range(lens_ptr, b, split, num_splits, BLOCK_N)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * group + g  # [BLOCK_G] query heads of this KV group
    head_ok = g < group
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=head_ok[:, None] & (d[None, :] < head_dim), other=0.0,
    )  # fmt: skip
    q = _dot_operand(q, DOT_FP32, DOT_FP16)
    row = tl.load(rows_ptr + b).to(tl.int64)
    m_i, l_i, acc_a, acc_b = _attend_split(
        q, k_ptr, v_ptr, r2t_ptr, row, kv_head, start, end,
        stride_ks, stride_kh, stride_vs, stride_vh, stride_r2t, qk_scale, head_dim,
        BLOCK_G, BLOCK_N, BLOCK_D, EVEN_D, V_PAIRS, PRECISION, NUM_STAGES,
    )  # fmt: skip
    mid = (b * group * tl.num_programs(1) + heads) * num_splits + split  # [BLOCK_G]
    _store_split(mid_o_ptr, BLOCK_D, mid_lse_ptr, mid, head_ok, m_i, l_i, acc_a, acc_b,
                 BLOCK_D, V_PAIRS)  # fmt: skip


@triton.jit
def _merge_head(
    mid_o_ptr, mid_lse_ptr, out_ptr, b, h, stride_ob, stride_oh, num_heads, head_dim,
    num_splits, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, CACHE: tl.constexpr,
):  # fmt: skip
    """out[b, h] = the num_splits partials of head h of request b, weighted by their
    log-sum-exps. CACHE: the partials' load cache modifier (".cg" when other programs of the
    same launch wrote them: L2, never a stale L1 line)."""
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    base = (b * num_heads + h) * num_splits
    lse = tl.load(mid_lse_ptr + base + s, mask=s < num_splits, other=float("-inf"),
                  cache_modifier=CACHE)  # fmt: skip
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty: all weights become 0
    w = tl.exp2(lse - m)  # [BLOCK_S]
    parts = tl.load(mid_o_ptr + (base + s[:, None]) * BLOCK_D + d[None, :],
                    mask=s[:, None] < num_splits, other=0.0, cache_modifier=CACHE)  # fmt: skip
    out = tl.sum(parts * w[:, None], axis=0) / tl.maximum(tl.sum(w, axis=0), 1e-30)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty),
             mask=d < head_dim)  # fmt: skip


@triton.jit
def _decode_stage2(
    mid_o_ptr, mid_lse_ptr, out_ptr, stride_ob, stride_oh, num_heads, head_dim, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pdl_wait(USE_PDL)
    pdl_release(USE_PDL)  # after the wait: see kernels/_common_jit.py
    _merge_head(mid_o_ptr, mid_lse_ptr, out_ptr, b, h, stride_ob, stride_oh, num_heads,
                head_dim, num_splits, BLOCK_S, BLOCK_D, "")  # fmt: skip


@dataclass(frozen=True, slots=True)
class DecodeTiles:
    """Launch settings of stage 1. fp16_dot (FP8 pools, 16-bit q only): K/V convert to fp16
    (exact for e4m3, one instruction per pair) and q to fp16 (exact for |q| < 65504) instead
    of to q's dtype; the e4m3 -> bf16 conversion costs several instructions per element.
    fp8_v_pairs (with fp16_dot, power-of-two head_dim >= 32): V is read as int16 pairs of
    adjacent head dims and split into even / odd fp16 tiles by bit operations, two dots, instead
    of Triton's byte-wise shared-memory reads of the FP8 V tile for the transposed operand of
    p @ V (64 LDS.U8 per thread and tile in the sm_90 build with Triton 3.9); the FP8 default
    (choose_tiles)."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    fp16_dot: bool = False
    fp8_v_pairs: bool = False


def choose_tiles(kv_dtype: torch.dtype) -> DecodeTiles:
    """Measured on an H200 (benchmarks/kernel_sweep.py, 32/8 heads, d 128, slots scattered,
    results/h200-2026-12-01-kernel-sweep-decode.json): bf16 pools keep 64-position tiles, 4
    warps, 3 stages (64 x 4k in 0.252 ms, 101% of the copy bandwidth for its bytes read; within
    1% of the best of 8 tilings at 64-256 x 1k-4k). FP8 pools: V as int16 pairs with fp16 dots,
    128-position tiles, 4 warps, 2 stages: 64 x 4k in 0.177 ms (72% of the copy bandwidth for
    its bytes) where byte-wise V with fp16 dots took 0.285 ms and the bf16 pool 0.252 ms;
    256 x 4k 0.630 ms vs 0.860."""
    if kv_dtype.itemsize == 1:
        return DecodeTiles(block_n=128, num_warps=4, num_stages=2, fp16_dot=True,
                           fp8_v_pairs=True)  # fmt: skip
    return DecodeTiles()


def choose_num_splits(batch: int, kv_heads: int, max_kv_len: int, sm_count: int) -> int:
    """Splits per request: enough programs for about 2 per SM, each split holding at least 128
    positions (of max_kv_len; splits are cut from each request's real length); at most 64. A
    pure function of Python ints (CUDA-graph safe).

    Measured on an H100 (benchmarks/kernel_sweep.py, bf16, 32/8 heads, d 128): one split is best
    from batch 64 up (64 x 4k: 82% of copy bandwidth vs 78% at 5 splits; 256 x 1k: 61% vs 20% at
    2); a lone 16k-token request wants 16-64 splits (23% vs 4.5% with one). A lone short request
    is latency-bound (each tile waits for its slot-index load): with 128 positions per split a
    1k-token request in a 4k graph bucket runs as 16 one-tile splits per KV head."""
    by_occupancy = triton.cdiv(2 * sm_count, max(1, batch * kv_heads))
    by_length = max(1, max_kv_len // 128)
    return max(1, min(64, by_occupancy, by_length))


def split_kernel_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tiles: DecodeTiles | None,
    pdl: bool,
) -> tuple[torch.Tensor, dict]:
    """The V pool as a split kernel reads it (int16 pairs with fp8_v_pairs) and the kernel's
    constexprs and launch options for q's shape and the pool's dtype (choose_tiles unless
    `tiles`); shared with kernels/decode_rope_attention.py."""
    interp = interpreting(q)
    if tiles is None:
        tiles = choose_tiles(k_cache.dtype)
    num_heads, head_dim = q.shape[1], q.shape[2]
    fp16_dot = tiles.fp16_dot and k_cache.element_size() == 1 and q.element_size() == 2
    v_pairs = tiles.fp8_v_pairs and fp16_dot and head_dim >= 32 and head_dim & (head_dim - 1) == 0
    v_arg = v_cache.view(torch.int16) if v_pairs else v_cache  # strides in pairs of elements
    block_d = max(16, triton.next_power_of_2(head_dim))
    use_pdl = pdl_enabled(pdl, q)
    consts = dict(
        BLOCK_G=max(16, triton.next_power_of_2(num_heads // k_cache.shape[1])),
        BLOCK_N=tiles.block_n, BLOCK_D=block_d, EVEN_D=block_d == head_dim,
        DOT_FP32=interp and not fp16_dot, DOT_FP16=fp16_dot, V_PAIRS=v_pairs,
        PRECISION="ieee" if interp or q.dtype == torch.float32 else "tf32",
        NUM_STAGES=tiles.num_stages, USE_PDL=use_pdl, num_warps=tiles.num_warps,
        **pdl_launch_options(use_pdl),
    )  # fmt: skip
    return v_arg, consts


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    max_kv_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    tiles: DecodeTiles | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """q: [B, Hq, D] -> out [B, Hq, D]: each request's one query over its seq_lens_kv slots.

    max_kv_len (an upper bound of seq_lens_kv, e.g. the CUDA-graph bucket's) only picks the
    split count; num_splits and tiles override the choices. pdl: launch both stages with
    programmatic dependent launch (kernels/_common.py).
    """
    out = check_attention_args(q, k_cache, v_cache, req_to_token, req_rows, seq_lens_kv, out)
    batch, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    if num_splits is None:
        num_splits = choose_num_splits(batch, kv_heads, max_kv_len, num_sms(q.device))
    if num_splits < 1:
        raise ValueError(f"num_splits: must be >= 1, got {num_splits}")
    if batch == 0:
        return out
    v_arg, consts = split_kernel_args(q, k_cache, v_cache, tiles, pdl)
    block_d = consts["BLOCK_D"]
    mid_o = torch.empty((batch, num_heads, num_splits, block_d), dtype=torch.float32,
                        device=q.device)  # fmt: skip
    mid_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    use_pdl = consts["USE_PDL"]
    _decode_stage1[(batch, kv_heads, num_splits)](
        q, k_cache, v_arg, req_to_token, req_rows, seq_lens_kv, mid_o, mid_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_arg.stride(0), v_arg.stride(1), req_to_token.stride(0),
        scale * LOG2E, num_heads // kv_heads, head_dim, num_splits, **consts,
    )  # fmt: skip
    _decode_stage2[(batch, num_heads)](
        mid_o, mid_lse, out, out.stride(0), out.stride(1), num_heads, head_dim, num_splits,
        BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d, USE_PDL=use_pdl,
        num_warps=4, **pdl_launch_options(use_pdl),
    )  # fmt: skip
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Plain torch, request by request, fp32 math: q [B, Hq, D] -> [B, Hq, D] in q's dtype."""
    out = torch.zeros_like(q)
    group = q.shape[1] // k_cache.shape[1]
    for b in range(q.shape[0]):
        n = int(seq_lens_kv[b])
        if n == 0:
            continue
        slots = req_to_token[int(req_rows[b]), :n].long()
        k = k_cache[slots].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v_cache[slots].float().repeat_interleave(group, dim=1)
        p = torch.einsum("hd,nhd->hn", q[b].float() * scale, k).softmax(dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", p, v).to(q.dtype)
    return out
