"""Where a batch-1 linear layer's fixed cost goes: chains of dependent kernels in one CUDA graph.

Each variant is a graph of 32 "layers" of the Llama-3.1-8B decode linear shapes (qkv, o,
gate_up, down: 128 launches, distinct weights, each one's input the previous one's output), timed
over replays; per layer against the bytes it must read over the copy bandwidth of the same run.
- empty_1 / empty_528: 128 empty launches of 1 or 528 programs (the graph's launch floor);
- engine / engine_pdl: the engine's linear layers (engine/layers/linear.py: the one-row kernel
  where the device's table has the shape, else the skinny kernel or cuBLAS), without and with
  programmatic dependent launch;
- rows_P: kernels/row_gemv.py with its default tiles and P programs per SM; rows_best /
  rows_best_pdl: each shape's best setting from --sweep, without and with PDL.
--sweep times 192 settings of kernels/row_gemv.py per shape against the engine's layer;
--write-table writes the winners to kernels/row_gemv_configs/<device>.json.

The first runs (results/h200-2026-12-04-gemv-chain-*.json, commit f3ef8f6) timed this
benchmark's own copy of the kernel's loop (no masks, otherwise the same), and two variants
measured and dropped there: releasing the next launch at the start of the one-wave kernel
(148.7 us a layer) and an L2 prefetch of each strip's first bytes before waiting (119-134 us).

    TRITON_INTERPRET=0 python -m raylight.benchmarks.gemv_chain_probe [--out FILE] [--sweep
        [--write-table]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import triton

from raylight.benchmarks.gpu_bench_device import copy_bandwidth, median_ms, versions
from raylight.engine.layers.linear import linear
from raylight.kernels.row_gemv import DEFAULT_CONFIG, RowGemvConfig, row_gemv, table_path

SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
LAYERS = 32


@triton.jit
def _empty(x_ptr):
    pass


SWEEP = [(bn, bk, st, wp) for bn in (2, 4, 8, 16) for bk in (256, 512, 1024) for st in (3, 4)
         for wp in (1, 2, 4) if bn * bk // (32 * wp) <= 128]  # fp32 accumulators per thread
SWEEP_PROGS = (3, 4, 6)


def make_chain(device) -> tuple[torch.Tensor, list[list[tuple[str, torch.Tensor]]]]:
    """The first input and, per layer, (shape name, weight); each launch of a chain takes the
    previous output (a view of its first K columns), so it depends on the one before."""
    x = torch.randn(1, 4096, device=device, dtype=torch.bfloat16)
    layers = [[(name, torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5)
               for name, n, k in SHAPES] for _ in range(LAYERS)]  # fmt: skip
    return x, layers


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


def sweep_shape(dev, n: int, k: int) -> list[dict]:
    """Every (config, programs per SM) of kernels/row_gemv.py on an [n, k] weight, and the engine's
    linear layer, each timed over 32 launches on distinct weights (stream order serializes
    them as dependent launches would be); fastest first."""
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    rows = [{"config": "engine", "us": _time_each(lambda w: linear(x, w, None, True, False), ws)}]
    for bn, bk, st, wp in SWEEP:
        for per_sm in SWEEP_PROGS:
            cfg = [bn, bk, st, wp, per_sm]
            config = RowGemvConfig(*cfg)
            try:
                us = _time_each(lambda w, c=config: row_gemv(x, w, None, c), ws)
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
                rows.append({"config": cfg, "error": repr(e)[:200]})
                continue
            rows.append({"config": cfg, "us": us})
    return sorted((r for r in rows if "us" in r), key=lambda r: r["us"])


def sweep(dev, copy: float) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, n, k in SHAPES:
        floor = n * k * 2 / copy * 1e6
        rows = sweep_shape(dev, n, k)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--progs-per-sm", type=int, nargs="*", default=[2, 4, 8],
                    help="programs per SM of the rows_P variants (default tiles)")
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
    swept = sweep(dev, copy) if args.sweep else {}
    if args.write_table and swept:
        path = write_table(swept, torch.cuda.get_device_name(), argv)
        print(f"table: {path}", flush=True)
    best = {name: r[0]["config"] for name, r in swept.items() if r and r[0]["config"] != "engine"}
    x0, chain = make_chain(dev)
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
            x = x0
            for row in chain:
                for _, w in row:
                    x = linear(x[:, : w.shape[1]], w, None, True, pdl)

        record("engine_pdl" if pdl else "engine", time_graph(engine))

    default = {shape: DEFAULT_CONFIG for shape, _, _ in SHAPES}
    variants = [(f"rows_{p}", {s: dataclasses.replace(c, progs_per_sm=p) for s, c in
                               default.items()}, False) for p in args.progs_per_sm]  # fmt: skip
    if best:
        tables = {shape: RowGemvConfig(*cfg) for shape, cfg in best.items()}
        variants += [("rows_best", tables, False), ("rows_best_pdl", tables, True)]
    for name, configs, pdl in variants:

        def rows(configs=configs, pdl=pdl) -> torch.Tensor:
            x = x0
            for row in chain:
                for shape, w in row:
                    x = row_gemv(x[:, : w.shape[1]], w, None, configs.get(shape, DEFAULT_CONFIG),
                                 pdl)  # fmt: skip
            return x

        try:
            w = chain[0][0][1]
            got = row_gemv(x0, w, None, configs.get("qkv", DEFAULT_CONFIG))
            err = got.float() - x0.float() @ w.float().T
            record(name, time_graph(rows), max_abs_err=err.abs().max().item(),
                   configs={k: dataclasses.astuple(v) for k, v in configs.items()})  # fmt: skip
        except Exception as e:  # noqa: BLE001 - a variant that fails to build is a result
            results[name] = {"error": repr(e)[:500]}
            print(f"{name}: FAILED {e!r}"[:300], flush=True)

    report = {"benchmark": "gemv_chain_probe", "device": torch.cuda.get_device_name(),
              "versions": versions(), "command": [sys.executable, "-m",
              "raylight.benchmarks.gemv_chain_probe", *(argv or sys.argv[1:])],
              "copy_bytes_per_s": copy, "layer_bytes": layer_bytes, "floor_us_per_layer": floor_us,
              "results": results, "sweep": swept}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
