"""Tile / split sweep of the attention kernels on a GPU: which launch settings reach the highest
fraction of the ceilings measured in the same run. Used to set the launchers' heuristics.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.kernel_sweep [--out FILE]
        [--sections prefill,decode] [--kv-dtypes bfloat16,float8_e4m3fn] [--prefill-lens 4096]
        [--decode-cases 64x4096,256x4096] [--prefill-variants "128,64,4,4,1;128,128,8,3,0"]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

import raylight.kernels.prefill_attention as prefill_mod
from raylight.benchmarks.gpu_bench_device import median_ms
from raylight.kernels.decode_attention import (
    DecodeTiles,
    choose_num_splits,
    choose_tiles,
    decode_attention,
    num_sms,
)

HEADS, KV_HEADS, D = 32, 8, 128  # Llama-3.1-8B attention


def ceilings() -> dict[str, float]:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gemm_ms = median_ms(lambda: a @ a)
    return {"copy_bytes_per_s": 2 * 2**30 / (copy_ms / 1e3),
            "gemm_flops_per_s": 2 * 8192**3 / (gemm_ms / 1e3)}  # fmt: skip


def prefill_sweep(
    t: int, gemm: float, kv_dtype: torch.dtype = torch.bfloat16, variants: list | None = None
) -> list[dict]:
    dev, dtype = "cuda", torch.bfloat16
    k = torch.randn(t + 1, KV_HEADS, D, device=dev, dtype=dtype).to(kv_dtype)
    v = torch.randn(t + 1, KV_HEADS, D, device=dev, dtype=dtype).to(kv_dtype)
    r2t = (torch.randperm(t, device=dev) + 1).int()[None]
    q = torch.randn(t, HEADS, D, device=dev, dtype=dtype)
    args = dict(req_to_token=r2t, req_rows=torch.zeros(1, dtype=torch.int64, device=dev),
                cu_seqlens_q=torch.tensor([0, t], device=dev),
                seq_lens_kv=torch.tensor([t], device=dev), max_q_len=t, scale=0.08)  # fmt: skip
    flops = 2 * t * t * D * HEADS  # causal: half of 4 * t^2 * d per head
    original = prefill_mod.choose_blocks
    rows = []
    for bm, bn, warps, stages, heads_fastest in variants or PREFILL_VARIANTS:
        prefill_mod.choose_blocks = lambda *_a, c=(bm, bn, warps, stages): c
        order = {} if heads_fastest else {"heads_fastest": False}  # (older launchers lack it)
        row = {"t": t, "kv_dtype": str(kv_dtype).split(".")[-1], "blocks": [bm, bn, warps, stages],
               "heads_fastest": bool(heads_fastest)}  # fmt: skip
        try:
            ms = median_ms(lambda o=order: prefill_mod.prefill_attention(q, k, v, **args, **o))
            rows.append({**row, "ms": ms, "flops_frac": flops / (ms / 1e3) / gemm})
        except Exception as exc:  # noqa: BLE001 - a config that does not compile
            rows.append({**row, "error": repr(exc)[:200]})
        finally:
            prefill_mod.choose_blocks = original
        print(rows[-1], flush=True)
    return rows


# (BLOCK_M, BLOCK_N, num_warps, num_stages, heads_fastest)
PREFILL_VARIANTS = [(128, 128, 8, 3, True), (128, 128, 8, 2, True), (128, 64, 8, 3, True),
                    (128, 64, 4, 3, True), (64, 64, 4, 3, True), (128, 32, 4, 3, True),
                    (64, 128, 4, 3, True), (128, 64, 8, 4, True), (128, 64, 4, 3, False),
                    (128, 128, 8, 3, False), (128, 64, 4, 4, True), (256, 64, 8, 3, True),
                    (256, 64, 8, 4, True), (256, 32, 8, 4, True)]  # fmt: skip


TILE_VARIANTS = [(64, 4, 3), (64, 4, 2), (64, 4, 4), (64, 8, 3), (32, 4, 3), (128, 8, 3),
                 (128, 8, 2), (128, 4, 2), (128, 4, 3), (256, 4, 2),
                 (256, 8, 2)]  # (block_n, num_warps, num_stages)  # fmt: skip


def decode_sweep(batch: int, ctx: int, copy: float, kv_dtype: torch.dtype) -> list[dict]:
    """Split counts with the default tiles, then every tile variant at the chosen split count.
    Slots are a random permutation of the pool (the engine's worst case)."""
    dev, dtype = "cuda", torch.bfloat16
    slots = batch * ctx + 1
    k = torch.randn(slots, KV_HEADS, D, device=dev, dtype=dtype).to(kv_dtype)
    v = torch.randn_like(k, dtype=dtype).to(kv_dtype)
    r2t = (torch.randperm(slots - 1, device=dev) + 1).int().view(batch, ctx)
    rows_t = torch.arange(batch, device=dev)
    lens = torch.full((batch,), ctx, device=dev)
    q = torch.randn(batch, HEADS, D, device=dev, dtype=dtype)
    kv_bytes = 2 * k.numel() * k.element_size()
    chosen = choose_num_splits(batch, KV_HEADS, ctx, num_sms(q.device))
    default = choose_tiles(kv_dtype)
    runs = [
        (s, default) for s in sorted({1, 2, 4, 8, 16, 32, 64, chosen}) if s <= max(1, ctx // 64)
    ]
    # (fp16_dot, fp8_v_pairs): both only change FP8 pools
    options = [(False, False), (True, False), (True, True)] if k.element_size() == 1 else [
        (False, False)]  # fmt: skip
    for bn, warps, stages in TILE_VARIANTS:
        for fp16, pairs in options:
            t = DecodeTiles(bn, warps, stages, fp16, pairs)
            if t != default:
                runs.append((chosen, t))
    out = []
    for splits, t in runs:
        row = {"batch": batch, "ctx": ctx, "kv_dtype": str(kv_dtype).split(".")[-1],
               "splits": splits, "chosen": splits == chosen, "tiles": dataclasses.asdict(t),
               "default_tiles": t == default}  # fmt: skip
        try:
            row["ms"] = median_ms(lambda s=splits, t=t: decode_attention(
                q, k, v, r2t, rows_t, lens, ctx, 0.08, num_splits=s, tiles=t))  # fmt: skip
            row["bw_frac"] = kv_bytes / (row["ms"] / 1e3) / copy
        except Exception as exc:  # noqa: BLE001 - a config that does not compile
            row["error"] = repr(exc)[:200]
        out.append(row)
        print(row, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--sections", default="prefill,decode", help="comma list: prefill, decode")
    p.add_argument("--kv-dtypes", default="bfloat16,float8_e4m3fn",
                   help="comma list of torch dtype names for the KV pools")
    p.add_argument("--prefill-lens", default="4096,16384", help="comma list of tokens")
    p.add_argument("--prefill-variants", default=None,
                   help="semicolon list of BM,BN,WARPS,STAGES,HEADS_FASTEST (0/1) "
                        "instead of the built-in list")  # fmt: skip
    p.add_argument("--decode-cases", default="1x1024,1x16384,64x4096,256x1024,256x4096",
                   help="comma list of BATCHxCONTEXT")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    kv_dtypes = [getattr(torch, name) for name in args.kv_dtypes.split(",")]
    cases = [tuple(int(x) for x in c.split("x")) for c in args.decode_cases.split(",")]
    variants = None
    if args.prefill_variants:
        variants = [tuple(int(x) for x in v.split(",")) for v in args.prefill_variants.split(";")]
    ceil = ceilings()
    print(ceil, flush=True)
    result = {"device": torch.cuda.get_device_name(), "ceilings": ceil, "prefill": [],
              "decode": [], "command": " ".join(sys.argv)}  # fmt: skip
    for kv_dtype in kv_dtypes if "prefill" in sections else ():
        for t in (int(x) for x in args.prefill_lens.split(",")):
            result["prefill"] += prefill_sweep(t, ceil["gemm_flops_per_s"], kv_dtype, variants)
    for kv_dtype in kv_dtypes if "decode" in sections else ():
        for batch, ctx in cases:
            result["decode"] += decode_sweep(batch, ctx, ceil["copy_bytes_per_s"], kv_dtype)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
