"""Attention kernel timings for gpu_bench: paged decode (bytes/s) and causal prefill (FLOP/s).

K/V live in one pool of randomly scattered slots, as in the engine: each request's ReqToToken row
points at a random permutation of pool slots. Timings are medians of CUDA-event samples with L2
flushed before each call and the kernels enqueued before the GPU reaches the start event (see
gpu_bench_device.time_ms), so they are GPU time, as in the engine's CUDA graphs.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import triton

from raylight.benchmarks.gpu_bench_device import time_ms
from raylight.benchmarks.gpu_bench_floors import decode_attention_bytes, prefill_attention_flops


@dataclass(frozen=True, slots=True)
class KernelShapes:
    """Llama-3.1-8B attention by default: 32 q heads, 8 KV heads, head_dim 128, bf16."""

    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16
    decode_batches: tuple[int, ...] = (1, 64, 256)
    decode_contexts: tuple[int, ...] = (1024, 4096, 16384)
    prefill_lens: tuple[int, ...] = (4096, 16384)
    warmup: int = 3
    iters: int = 20


@dataclass(slots=True)
class Pool:
    k: torch.Tensor  # [num_slots, kv_heads, head_dim]; slot 0 is never handed out
    v: torch.Tensor

    @property
    def num_slots(self) -> int:
        return self.k.shape[0]


def make_pool(shapes: KernelShapes, tokens: int, device: torch.device, seed: int) -> Pool:
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (tokens + 1, shapes.kv_heads, shapes.head_dim)
    k = torch.randn(shape, device=device, dtype=shapes.dtype, generator=gen)
    v = torch.randn(shape, device=device, dtype=shapes.dtype, generator=gen)
    return Pool(k, v)


def scattered_table(pool: Pool, rows: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """[rows, length] int32 of distinct random slots in [1, num_slots)."""
    device = pool.k.device
    perm = torch.randperm(pool.num_slots - 1, device=device, generator=gen)[: rows * length]
    return (perm + 1).to(torch.int32).view(rows, length)


def bench_decode(
    pool: Pool, shapes: KernelShapes, batch: int, kv_len: int, copy_bw: float | None,
    kernel: str = "split",
) -> dict[str, object]:  # fmt: skip
    """One decode case. kernel "split": kernels/decode_attention.py over rotated q; "rope": the
    engine's decode-step kernel, kernels/decode_rope_attention.py (rotary, the new token's K/V
    stored at each request's last position, attention and merge in one launch)."""
    from raylight.kernels.attention_checks import num_sms
    from raylight.kernels.decode_attention import choose_num_splits, decode_attention
    from raylight.kernels.decode_rope_attention import max_merged_splits

    device = pool.k.device
    gen = torch.Generator(device=device).manual_seed(batch * 100_003 + kv_len)
    table = scattered_table(pool, batch, kv_len, gen)
    rows = torch.randperm(batch, device=device, generator=gen)
    req_to_token = torch.empty_like(table)
    req_to_token[rows] = table  # request b's slots live in a random row
    lens = torch.full((batch,), kv_len, dtype=torch.int32, device=device)
    q = torch.randn(batch, shapes.heads, shapes.head_dim, device=device, dtype=shapes.dtype,
                    generator=gen)  # fmt: skip
    out = torch.empty_like(q)
    scale = shapes.head_dim**-0.5
    splits = choose_num_splits(batch, shapes.kv_heads, kv_len, num_sms(device))

    def call() -> None:
        decode_attention(q, pool.k, pool.v, req_to_token, rows, lens, kv_len, scale, out=out)

    if kernel == "rope":
        call = _rope_call(pool, shapes, q, out, req_to_token, rows, lens, kv_len, gen)
        group = triton.next_power_of_2(shapes.heads // shapes.kv_heads)
        splits = min(splits, max_merged_splits(group, shapes.head_dim))
    elif kernel != "split":
        raise ValueError(f"kernel: 'split' or 'rope', got {kernel!r}")

    ms = time_ms(call, device, shapes.warmup, shapes.iters, flush=True)
    med = statistics.median(ms)
    nbytes = decode_attention_bytes(batch, kv_len, shapes.heads, shapes.kv_heads,
                                    shapes.head_dim, shapes.dtype.itemsize,
                                    pool.k.dtype.itemsize)  # fmt: skip
    achieved = nbytes["total"] / (med / 1e3)
    return {"batch": batch, "kv_len": kv_len, "kv_dtype": str(pool.k.dtype).split(".")[-1],
            "kernel": kernel, "median_ms": med, "min_ms": min(ms),
            "bytes": nbytes, "bytes_per_s": achieved, "num_splits": splits,
            "bw_frac": achieved / copy_bw if copy_bw else None}  # fmt: skip


def _rope_call(
    pool: Pool, shapes: KernelShapes, q: torch.Tensor, out: torch.Tensor,
    req_to_token: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor, kv_len: int,
    gen: torch.Generator,
) -> Callable[[], None]:  # fmt: skip
    """A launch of the engine's decode-step kernel on this case: q and the new token's k, v
    before rotary, stored at each request's last position (its slot is overwritten)."""
    from raylight.kernels.decode_rope_attention import decode_rope_attention

    batch, device = q.shape[0], q.device
    kv = torch.randn(batch, 2, shapes.kv_heads, shapes.head_dim, device=device,
                     dtype=shapes.dtype, generator=gen)  # fmt: skip
    positions = lens.long() - 1
    slots = req_to_token[rows, kv_len - 1].long()
    angles = torch.rand(kv_len, shapes.head_dim // 2, device=device, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    counters = torch.zeros(batch * shapes.kv_heads, dtype=torch.int32, device=device)
    scale = shapes.head_dim**-0.5

    def call() -> None:
        decode_rope_attention(positions, q, kv[:, 0], kv[:, 1], cos, sin, pool.k, pool.v, slots,
                              req_to_token, rows, lens, kv_len, scale, counters=counters,
                              out=out)  # fmt: skip

    return call


def bench_prefill(
    pool: Pool, shapes: KernelShapes, q_len: int, gemm: float | None
) -> dict[str, object]:
    from raylight.kernels.prefill_attention import prefill_attention

    device = pool.k.device
    gen = torch.Generator(device=device).manual_seed(7 * q_len + 1)
    req_to_token = scattered_table(pool, 1, q_len, gen)
    rows = torch.zeros(1, dtype=torch.int32, device=device)
    cu = torch.tensor([0, q_len], dtype=torch.int32, device=device)
    lens = torch.tensor([q_len], dtype=torch.int32, device=device)
    q = torch.randn(q_len, shapes.heads, shapes.head_dim, device=device, dtype=shapes.dtype,
                    generator=gen)  # fmt: skip
    out = torch.empty_like(q)
    scale = shapes.head_dim**-0.5

    def call() -> None:
        prefill_attention(q, pool.k, pool.v, req_to_token, rows, cu, lens, q_len, scale, out=out)

    ms = time_ms(call, device, shapes.warmup, shapes.iters, flush=True)
    med = statistics.median(ms)
    flops = prefill_attention_flops(q_len, shapes.heads, shapes.head_dim)
    achieved = flops / (med / 1e3)
    return {"q_len": q_len, "median_ms": med, "min_ms": min(ms), "flops": flops,
            "flops_per_s": achieved, "flops_frac": achieved / gemm if gemm else None}  # fmt: skip


def _guarded(fn: Callable[[], dict[str, object]], label: str, errors: list[dict]) -> dict | None:
    try:
        row = fn()
    except Exception as e:  # noqa: BLE001 - one failing shape must not stop the others
        errors.append({"case": label, "error": repr(e), "traceback": traceback.format_exc()})
        print(f"  kernels {label}: FAILED {e!r}", flush=True)
        return None
    print(f"  kernels {label}: {row['median_ms']:.3f} ms", flush=True)
    return row


def case_order(shapes: KernelShapes) -> list[tuple]:
    """The summary's cases first (decode batch 64 x 4k, prefill 16k), so that a short deadline
    skips the others; then decode by batch and context, then prefill."""
    decode = [("decode", b, c) for b in shapes.decode_batches for c in shapes.decode_contexts]
    prefill = [("prefill", n) for n in shapes.prefill_lens]
    first = [c for c in (("decode", 64, 4096), ("prefill", 16384)) if c in decode + prefill]
    return first + [c for c in decode + prefill if c not in first]


def run_kernels(
    shapes: KernelShapes,
    device: torch.device,
    copy_bw: float | None,
    gemm: float | None,
    deadline: float,
) -> dict[str, object]:
    """Every decode (batch x context) and prefill length that fits before `deadline`
    (perf_counter seconds); the pool holds the largest case."""
    tokens = max([b * c for b in shapes.decode_batches for c in shapes.decode_contexts]
                 + list(shapes.prefill_lens))  # fmt: skip
    pool = make_pool(shapes, tokens, device, seed=0)
    errors: list[dict] = []
    decode: list[dict] = []
    prefill: list[dict] = []
    skipped: list[str] = []
    for case in case_order(shapes):
        label = f"decode b{case[1]} ctx{case[2]}" if case[0] == "decode" else f"prefill {case[1]}"
        if time.perf_counter() > deadline:
            skipped.append(label)
            continue
        if case[0] == "decode":
            fn = partial(bench_decode, pool, shapes, case[1], case[2], copy_bw)
        else:
            fn = partial(bench_prefill, pool, shapes, case[1], gemm)
        row = _guarded(fn, label, errors)
        if row is not None:
            (decode if case[0] == "decode" else prefill).append(row)
    # The summary's decode case again (gpu_bench_report: 64 x 4k, else the largest): through
    # the engine's decode-step kernel (one launch with rotary and the KV store), then from an
    # FP8 pool (kv_cache_dtype="fp8").
    again = bool(shapes.decode_batches and shapes.decode_contexts)
    batch, ctx = max(shapes.decode_batches or [0]), max(shapes.decode_contexts or [0])
    if 64 in shapes.decode_batches and 4096 in shapes.decode_contexts:
        batch, ctx = 64, 4096
    if again and time.perf_counter() < deadline:
        row = _guarded(partial(bench_decode, pool, shapes, batch, ctx, copy_bw, "rope"),
                       f"decode rope b{batch} ctx{ctx}", errors)  # fmt: skip
        if row is not None:
            decode.append(row)
    del pool
    if again and time.perf_counter() < deadline:
        bf = make_pool(shapes, batch * ctx, device, seed=1)
        fp8_pool = Pool(bf.k.to(torch.float8_e4m3fn), bf.v.to(torch.float8_e4m3fn))
        del bf
        row = _guarded(partial(bench_decode, fp8_pool, shapes, batch, ctx, copy_bw),
                       f"decode fp8 b{batch} ctx{ctx}", errors)  # fmt: skip
        if row is not None:
            decode.append(row)
        del fp8_pool
    decode.sort(key=lambda r: (r["batch"], r["kv_len"], r["kv_dtype"], r["kernel"]))
    prefill.sort(key=lambda r: r["q_len"])
    return {"shapes": {"heads": shapes.heads, "kv_heads": shapes.kv_heads,
                       "head_dim": shapes.head_dim, "dtype": str(shapes.dtype).split(".")[-1],
                       "pool_tokens": tokens, "warmup": shapes.warmup, "iters": shapes.iters},
            "decode": decode, "prefill": prefill, "skipped": skipped,
            "errors": errors}  # fmt: skip
