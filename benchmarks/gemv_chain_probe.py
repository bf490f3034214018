"""Where a batch-1 linear layer's fixed cost goes: chains of dependent kernels in one CUDA graph.

Each variant is a graph of 32 "layers" of the Llama-3.1-8B decode linear shapes (qkv, o,
gate_up, down: 128 launches, distinct weights, each one's input the previous one's output), timed
over replays; per layer against the bytes it must read over the copy bandwidth of the same run.
- empty_1 / empty_528: 128 empty launches of 1 or 528 programs (the graph's launch floor);
- engine / engine_pdl: the engine's linear layers (engine/layers/linear.py: the swept skinny kernel
  or cuBLAS), without and with its programmatic dependent launch;
- rows_P (_pdl1, _pdl2): a GEMV whose programs each own a contiguous strip of output
  rows (one wave: a fixed grid of P programs per SM, strips balanced to one row block), fp32
  products accumulated elementwise and reduced once per row block; `_pdl1` / `_pdl2`:
  programmatic dependent launch, the next launch released at the start (one wave: its programs
  only take free slots) or after the loop, and waited on before the first read of x;
  rows_best_*: each shape's best setting from --sweep, `_l2N`: each program also asks L2 for
  the first N x 2 KB of its strip before waiting.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.gemv_chain_probe [--out FILE] [--sweep
        [--write-table]]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from raylight.benchmarks.gpu_bench_device import copy_bandwidth, median_ms, versions
from raylight.engine.layers.linear import linear
from raylight.kernels.row_gemv import table_path

SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
LAYERS = 32


@triton.jit
def _empty(x_ptr):
    pass


@triton.jit
def _gemv_rows(x_ptr, w_ptr, w_bytes_ptr, y_ptr, N, K, stride_wn,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
               PDL: tl.constexpr, L2_LANES: tl.constexpr, L2_CHUNK: tl.constexpr):  # fmt: skip
    """y[n] = sum_k W[n, k] x[k] (M = 1); N % BLOCK_N == 0 and K % BLOCK_K == 0. PDL: 0 off,
    1 release the next launch at the start, 2 after the loop."""
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    blocks = N // BLOCK_N
    b0 = pid * blocks // progs
    b1 = (pid + 1) * blocks // progs
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    strip = w_ptr + (b0 * BLOCK_N).to(tl.int64) * stride_wn
    if L2_LANES > 0:  # bulk L2 prefetch of the strip's first L2_LANES * L2_CHUNK bytes
        lane = tl.arange(0, L2_LANES).to(tl.int64)
        strip_bytes = ((b1 - b0) * BLOCK_N).to(tl.int64) * stride_wn * 2
        start = lane * L2_CHUNK
        size = (tl.minimum(strip_bytes - start, L2_CHUNK) // 16 * 16).to(tl.int32)
        strip_at = (b0 * BLOCK_N).to(tl.int64) * stride_wn * 2
        ptrs = w_bytes_ptr + strip_at + tl.where(size > 0, start, 0)
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; "
            "mov.u32 $0, 0; }",
            "=r,l,r", [ptrs, size], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip
    if PDL > 0:
        tl.extra.cuda.gdc_wait()
    k_steps = K // BLOCK_K
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for i in tl.range(0, (b1 - b0) * k_steps, num_stages=STAGES):
        blk = i // k_steps
        kt = i - blk * k_steps
        w = tl.load(strip + (blk * BLOCK_N + rn)[:, None] * stride_wn + kt * BLOCK_K + rk[None, :])
        x = tl.load(x_ptr + kt * BLOCK_K + rk)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        if kt == k_steps - 1:
            out = tl.sum(acc, axis=1)
            tl.store(y_ptr + (b0 + blk) * BLOCK_N + rn, out.to(y_ptr.dtype.element_ty))
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()


def gemv_rows(x, w, y, progs, block_n, block_k, stages, warps, pdl, l2_lanes=0, l2_chunk=2048):
    n, k = w.shape
    _gemv_rows[(progs,)](x, w, w.view(torch.uint8), y, n, k, w.stride(0), BLOCK_N=block_n,
                         BLOCK_K=block_k, STAGES=stages, PDL=pdl, L2_LANES=l2_lanes,
                         L2_CHUNK=l2_chunk,
                         num_warps=warps, **({"launch_pdl": True} if pdl else {}))  # fmt: skip


SWEEP = [(bn, bk, st, wp) for bn in (2, 4, 8, 16) for bk in (256, 512, 1024) for st in (3, 4)
         for wp in (1, 2, 4) if bn * bk // (32 * wp) <= 128]  # fp32 accumulators per thread
SWEEP_PROGS = (3, 4, 6)


def make_chain(device):
    """Per layer and shape: (name, weight, input, output); each input is a view of the output
    before it, so each launch depends on the one before."""
    layers = []
    x = torch.randn(1, 4096, device=device, dtype=torch.bfloat16)
    for _ in range(LAYERS):
        row = []
        for name, n, k in SHAPES:
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5
            y = torch.empty(1, n, device=device, dtype=torch.bfloat16)
            row.append((name, w, x[:, :k], y))
            x = y
        layers.append(row)
    return layers


def time_graph(fn) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, warmup=3, iters=15)


def _time_each(fn, ws: list[torch.Tensor]) -> float:
    """Microseconds per call of fn(w) over the weights ws, from one CUDA graph."""
    return time_graph(lambda: [fn(w) for w in ws]) * 1e3 / len(ws)


def sweep_shape(dev, sms: int, n: int, k: int) -> list[dict]:
    """Every (config, programs per SM) of the row GEMV on an [n, k] weight, and the engine's
    linear layer, each timed over 32 launches on distinct weights (stream order serializes
    them as dependent launches would be); fastest first."""
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    y = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
    rows = [{"config": "engine", "us": _time_each(lambda w: linear(x, w, None, True, False), ws)}]
    for bn, bk, st, wp in SWEEP:
        if n % bn or k % bk:
            continue
        for per_sm in SWEEP_PROGS:
            cfg = [bn, bk, st, wp, per_sm]
            try:
                us = _time_each(lambda w, c=cfg: gemv_rows(x, w, y, c[4] * sms, *c[:4], 0), ws)
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
                rows.append({"config": cfg, "error": repr(e)[:200]})
                continue
            rows.append({"config": cfg, "us": us})
    return sorted((r for r in rows if "us" in r), key=lambda r: r["us"])


def sweep(dev, sms: int, copy: float) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, n, k in SHAPES:
        floor = n * k * 2 / copy * 1e6
        rows = sweep_shape(dev, sms, n, k)
        for r in rows:
            r["us"] = round(r["us"], 3)
            r["over_bytes_us"] = round(r["us"] - floor, 3)
        engine = next(r["us"] for r in rows if r["config"] == "engine")
        print(f"{name}: floor {floor:.2f} us; engine {engine:.2f}; best "
              + "; ".join(f"{r['config']} {r['us']:.2f}" for r in rows[:4]), flush=True)
        out[name] = rows
        torch.cuda.empty_cache()
    return out


def write_table(swept: dict[str, list[dict]], device: str, argv: list[str] | None) -> Path:
    """kernels/row_gemv_configs/<device>.json, as kernels/row_gemv.load_row_table reads it."""
    dims = {name: (n, k) for name, n, k in SHAPES}
    entries = []
    for name, rows in swept.items():
        engine = next(r["us"] for r in rows if r["config"] == "engine")
        best = rows[0]
        if best["config"] != "engine":
            n, k = dims[name]
            entries.append({"n": n, "k": k, "config": best["config"], "us": best["us"],
                            "engine_us": engine})  # fmt: skip
    path = table_path(device)
    path.write_text(json.dumps({
        "device": device, "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join(["python -m raylight.benchmarks.gemv_chain_probe",
                             *(argv or sys.argv[1:])]),
        "config_fields": ["block_n", "block_k", "num_stages", "num_warps", "progs_per_sm"],
        "entries": entries}, indent=1) + "\n")  # fmt: skip
    return path


ROWS_CONFIGS = {  # name -> (block_n, block_k, stages, warps)
    "qkv": (4, 512, 4, 2), "o": (4, 512, 4, 2), "gate_up": (8, 512, 4, 2), "down": (4, 512, 4, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--progs-per-sm", type=int, nargs="*", default=[2, 4, 8])
    ap.add_argument("--sweep", action="store_true",
                    help="first sweep the row GEMV's settings per shape; the chains then use the "
                         "best of each shape")  # fmt: skip
    ap.add_argument("--write-table", action="store_true",
                    help="with --sweep: write kernels/row_gemv_configs/<device>.json (each "
                         "shape's best setting where it beats the layers' kernel)")  # fmt: skip
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    copy = copy_bandwidth(dev, 2**30, 10)["bytes_per_s"]
    swept = sweep(dev, sms, copy) if args.sweep else {}
    if args.write_table and swept:
        path = write_table(swept, torch.cuda.get_device_name(), argv)
        print(f"table: {path}", flush=True)
    best = {name: r[0]["config"] for name, r in swept.items() if r and r[0]["config"] != "engine"}
    chain = make_chain(dev)
    layer_bytes = sum(n * k * 2 for _, n, k in SHAPES)
    floor_us = layer_bytes / copy * 1e6
    results: dict[str, dict] = {}

    def record(name: str, ms: float, **extra) -> None:
        us = ms * 1e3 / LAYERS
        results[name] = {"us_per_layer": round(us, 2), "over_bytes_us": round(us - floor_us, 2),
                         **extra}  # fmt: skip
        print(f"{name:28s} {us:8.2f} us/layer ({us - floor_us:+.2f} over bytes)", flush=True)

    dummy = torch.zeros(1, device=dev)
    for progs in (1, 4 * sms):
        ms = time_graph(lambda p=progs: [_empty[(p,)](dummy) for _ in range(4 * LAYERS)])
        record(f"empty_{progs}", ms, us_per_launch=round(ms * 1e3 / (4 * LAYERS), 3))

    for pdl in (False, True):

        def engine(pdl=pdl) -> None:
            x = chain[0][0][2]
            for row in chain:
                for _, w, _, _ in row:
                    x = linear(x[:, : w.shape[1]], w, None, True, pdl)

        record("engine_pdl" if pdl else "engine", time_graph(engine))

    variants = [
        (f"rows_{p}" + (f"_pdl{pdl}" if pdl else ""),
         {shape: (*ROWS_CONFIGS[shape], p) for shape in ROWS_CONFIGS}, pdl, 0)
        for p in args.progs_per_sm for pdl in (0, 1, 2)
    ]  # fmt: skip
    if best:
        variants += [(f"rows_best_pdl{pdl}_l2{lanes}", best, pdl, lanes)
                     for pdl, lanes in ((0, 0), (2, 0), (2, 16), (2, 64))]  # fmt: skip
    for name, configs, pdl, lanes in variants:

        def rows(configs=configs, pdl=pdl, lanes=lanes) -> None:
            for row in chain:
                for shape, w, x, y in row:
                    bn, bk, st, wp, per_sm = configs[shape]
                    gemv_rows(x, w, y, per_sm * sms, bn, bk, st, wp, pdl, lanes)

        try:
            rows()
            torch.cuda.synchronize()
            _, w, x, y = chain[0][2]
            err = (y.float() - x.float() @ w.float().T).abs().max().item()
            record(name, time_graph(rows), max_abs_err=err, configs=configs)
        except Exception as e:  # noqa: BLE001 - a variant that fails to build is a result
            results[name] = {"error": repr(e)[:500]}
            print(f"{name}: FAILED {e!r}"[:300], flush=True)

    report = {"benchmark": "gemv_chain_probe", "device": torch.cuda.get_device_name(),
              "versions": versions(), "command": [sys.executable, "-m",
              "raylight.benchmarks.gemv_chain_probe", *(argv or sys.argv[1:])],
              "copy_bytes_per_s": copy, "layer_bytes": layer_bytes, "floor_us_per_layer": floor_us,
              "rows_configs": ROWS_CONFIGS, "results": results, "sweep": swept}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
