"""Launch-setting sweep of the small-batch linear kernel against cuBLAS on a GPU, over the
Llama-3.1-8B decode shapes: which settings stream the weights closest to the copy bandwidth
measured in the same run. Used to set kernels/skinny_linear_table.choose_config.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.skinny_sweep [--rows 1,2,4,8] [--out FILE]
        [--fused] [--write-table]

--write-table writes kernels/skinny_linear_configs/<device>.json: per shape and M, the fastest
setting where it beats cuBLAS by at least 2%, else null (the layers then call cuBLAS).
--fused also sweeps each layer shape with its fusion of engine option fuse_decode_layers (qkv:
the RMSNorm prologue; o, down: the residual epilogue; gate_up: the norm and SiLU-and-mul) and
records the best as the table's fused_config.

Each timed call cycles over enough copies of the weight (>= 256 MiB) that nothing is served
from L2, inside a CUDA graph. Bandwidth = weight bytes / time (x and y are a rounding error
at these shapes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from raylight.benchmarks.gpu_bench_device import copy_bandwidth, median_ms
from raylight.kernels.skinny_linear import skinny_linear, skinny_linear_ref
from raylight.kernels.skinny_linear_table import SkinnyConfig, table_path

# (name, N, K) of one Llama-3.1-8B layer's linear layers and the LM head; count per step.
SHAPES = [("qkv", 6144, 4096, 32), ("o", 4096, 4096, 32), ("gate_up", 28672, 4096, 32),
          ("down", 4096, 14336, 32), ("lm_head", 128256, 4096, 1)]  # fmt: skip
CONFIGS = [SkinnyConfig(False, bn, bk, w, s) for bn, bk, w, s in [
    (4, 1024, 4, 3), (8, 512, 4, 3), (8, 1024, 4, 3), (8, 1024, 8, 4), (16, 256, 4, 3),
    (16, 512, 4, 3), (16, 512, 8, 3), (16, 1024, 8, 3), (32, 256, 4, 3), (32, 512, 8, 3),
    (16, 512, 4, 1), (8, 512, 4, 1), (4, 2048, 8, 3), (8, 2048, 8, 2), (2, 2048, 4, 3),
    (4, 1024, 2, 4), (8, 512, 2, 4)]] + [SkinnyConfig(True, bn, bk, w, s) for bn, bk, w, s in [
    (16, 256, 4, 3), (16, 512, 4, 3), (16, 256, 4, 5), (32, 128, 4, 4), (32, 256, 4, 4),
    (64, 128, 4, 4)]]  # fmt: skip
COPY_BYTES = 2**30
# The fusion each shape gets in a fused decode layer (engine/models/llama.py forward_fused).
FUSIONS = {"qkv": ("norm",), "o": ("residual",), "gate_up": ("norm", "gated"),
           "down": ("residual",)}  # fmt: skip


def fused_args(name: str, xs: list[torch.Tensor], n: int) -> list[dict]:
    """skinny_linear keywords of shape `name`'s fusion, one dict per x (norm weight near 1, a
    residual of the output's shape)."""
    fusion = FUSIONS[name]
    out = []
    for x in xs:
        kw: dict = {"gated": "gated" in fusion}
        if "norm" in fusion:
            kw["norm_weight"] = 1 + 0.1 * torch.randn(x.shape[1], device=x.device, dtype=x.dtype)
        if "residual" in fusion:
            kw["residual"] = torch.randn(x.shape[0], n, device=x.device, dtype=x.dtype)
        out.append(kw)
    return out


def time_per_call(fn, xs, ws) -> float:
    """GPU time per call, from one CUDA graph of a call per weight copy (as the engine's decode
    graphs run them: no launch overhead, only the gaps between kernels)."""

    def run() -> None:
        for x, w in zip(xs, ws, strict=True):
            fn(x, w)

    run()  # compiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return median_ms(graph.replay, warmup=2, iters=9) / len(ws)


def sweep_shape(
    name: str, n: int, k: int, rows: list[int], copy_bw: float, fused: bool = False
) -> list[dict]:
    wbytes = n * k * 2
    copies = max(2, -(-256 * 2**20 // wbytes))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    out_n = n // 2 if fused and "gated" in FUSIONS[name] else n
    out = []
    for m in rows:
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        kws = fused_args(name, xs, out_n) if fused else [{} for _ in xs]
        by_x = {id(x): kw for x, kw in zip(xs, kws, strict=True)}
        ref = skinny_linear_ref(xs[0], ws[0], **kws[0]).float()
        cublas_ms = time_per_call(F.linear, xs, ws)
        row = {"shape": name, "n": n, "k": k, "m": m, "cublas_ms": cublas_ms,
               "cublas_bw_frac": wbytes / (cublas_ms / 1e3) / copy_bw, "configs": [],
               "fusion": list(FUSIONS[name]) if fused else []}  # fmt: skip
        for cfg in CONFIGS:
            entry = {"config": [cfg.use_dot, cfg.block_n, cfg.block_k, cfg.num_warps,
                                cfg.num_stages]}  # fmt: skip
            try:
                y = skinny_linear(xs[0], ws[0], None, cfg, **kws[0])
                err = (y.float() - ref).abs().max().item()
                ms = time_per_call(
                    lambda x, w, c=cfg, kw=by_x: skinny_linear(x, w, None, c, **kw[id(x)]), xs, ws
                )
                entry.update(ms=ms, bw_frac=wbytes / (ms / 1e3) / copy_bw, max_err=err)
            except Exception as exc:  # noqa: BLE001 - a setting that does not compile
                entry["error"] = repr(exc)[:200]
            row["configs"].append(entry)
        timed = [c for c in row["configs"] if "ms" in c]
        best = min(timed, key=lambda c: c["ms"]) if timed else None
        row["best"] = best
        tag = f"{name}+{'+'.join(row['fusion'])}" if fused else name
        print(f"{tag} m={m}: cuBLAS {cublas_ms * 1e3:.1f} us ({row['cublas_bw_frac']:.3f}), "
              f"best {best}", flush=True)  # fmt: skip
        out.append(row)
    del ws
    torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--fused", action="store_true",
                    help="also sweep each layer shape with its fuse_decode_layers fusion")
    ap.add_argument("--write-table", action="store_true")
    args = ap.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    copy_bw = copy_bandwidth(torch.device("cuda"), COPY_BYTES, iters=10)["bytes_per_s"]
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s", flush=True)
    results = []
    for name, n, k, _count in SHAPES:
        results.extend(sweep_shape(name, n, k, rows, copy_bw))
        if args.fused and name in FUSIONS:
            results.extend(sweep_shape(name, n, k, rows, copy_bw, fused=True))
    # A whole decode step's linear layers at each M: the best setting per shape vs cuBLAS.
    step = {}
    for m in rows:
        per = {r["shape"]: r for r in results if r["m"] == m and not r["fusion"]}
        count = {name: c for name, _n, _k, c in SHAPES}
        cublas = sum(per[s]["cublas_ms"] * count[s] for s in per)
        best = sum(min(per[s]["best"]["ms"], per[s]["cublas_ms"]) * count[s] for s in per)
        step[m] = {"cublas_ms": cublas, "best_mix_ms": best}
    floor_ms = sum(n * k * 2 * c for _s, n, k, c in SHAPES) / copy_bw * 1e3
    report = {"device": torch.cuda.get_device_name(), "copy_bytes_per_s": copy_bw,
              "torch": torch.__version__, "step_linear_floor_ms": floor_ms, "step": step,
              "command": "python -m raylight.benchmarks.skinny_sweep " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "results": results}  # fmt: skip
    print(json.dumps({"floor_ms": floor_ms, "step": step}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    if args.write_table:
        path = table_path(report["device"])
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(make_table(report), indent=1))
        print(f"wrote {path}")
    return 0


def make_table(report: dict) -> dict:
    """The table kernels/skinny_linear_table.load_table reads: per plain row its best setting or
    null (cuBLAS), the kernel's best, and from a fused row of the same shape and M (--fused)
    the best setting with its fusion."""
    fused = {(r["n"], r["k"], r["m"]): r["best"] for r in report["results"]
             if r.get("fusion") and r["best"] is not None}  # fmt: skip
    entries = []
    for r in report["results"]:
        if r.get("fusion"):
            continue
        wins = r["best"] is not None and r["best"]["ms"] < 0.98 * r["cublas_ms"]
        best = r["best"]
        entries.append({"n": r["n"], "k": r["k"], "m": r["m"],
                        "config": best["config"] if wins else None,
                        "ms": best["ms"] if wins else r["cublas_ms"],
                        "cublas_ms": r["cublas_ms"],
                        # the kernel's best setting even where cuBLAS is chosen (used when
                        # the kernel is preferred, e.g. for programmatic dependent launch)
                        "kernel_config": best["config"] if best else None,
                        "kernel_ms": best["ms"] if best else None})  # fmt: skip
        fused_best = fused.get((r["n"], r["k"], r["m"]))
        if fused_best is not None:
            entries[-1].update(fused_config=fused_best["config"], fused_ms=fused_best["ms"])
    return {"device": report["device"], "torch": report["torch"], "command": report["command"],
            "entries": entries}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
