"""What an L2 prefetch of a linear layer's weights saves at batch 1 (kernels/l2_prefetch.py).

For each Llama-3.1-8B linear shape, a CUDA graph replays 32 times: fork a prefetch of the first
P MB of weight copy i (engine/layers/weight_prefetch.py), a spin kernel of G microseconds (the
step's small kernels, which leave the memory idle), join, then y = x W_i^T with the engine's
small-batch kernel. 32 copies of each weight (1-7.5 GB) keep L2 cold between layers, as in a
decode step. The time per layer minus the spin alone is the layer's cost; P = 0 is today's.
A row with "l2_warm" reads one copy 32 times instead: what the layer costs from L2.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.l2_prefetch_bench [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import triton

from raylight.engine.layers.linear import linear
from raylight.engine.layers.weight_prefetch import MB, WeightPrefetch

SHAPES = {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}  # fmt: skip
COPIES = 32


def _time_graph(body, replays: int = 20) -> float:
    """Median ms of one replay of a graph that runs `body()`."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        body()  # warm-up: compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _spin_cycles_per_us() -> float:
    """torch.cuda._sleep's cycles per microsecond, from a graph of 32 long spins."""
    cycles = 200_000
    ms = _time_graph(lambda: [torch.cuda._sleep(cycles) for _ in range(COPIES)])
    return cycles * COPIES / (ms * 1e3)


def _spin(cycles: int) -> None:
    if cycles > 0:
        torch.cuda._sleep(cycles)


def _layers_ms(weights: list[torch.Tensor], x: torch.Tensor, cycles: int, size_mb: float) -> float:
    """One replay of: per weight, fork a prefetch of its first `size_mb`, spin, join, linear."""
    prefetch = WeightPrefetch(int(size_mb * MB), 0)

    def body() -> None:
        for w in weights:
            prefetch.start(w, prefetch.attn_bytes)
            _spin(cycles)
            prefetch.join()
            linear(x, w, None, skinny=True)

    return _time_graph(body)


def measure(gaps_us: list[float], sizes_mb: list[float]) -> dict:
    per_us = _spin_cycles_per_us()
    rows = []
    for name, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(COPIES)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        weight_mb = n * k * 2 / MB
        # One weight read 32 times: from L2 where it fits (48 MB and less), the bound on what
        # a prefetch could give.
        warm_us = _layers_ms([weights[0]] * COPIES, x, 0, 0.0) * 1e3 / COPIES
        rows.append({"shape": name, "weight_mb": round(weight_mb, 1), "l2_warm": True,
                     "layer_us": round(warm_us, 2)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        for gap in gaps_us:
            cycles = int(gap * per_us)
            spin_ms = _time_graph(lambda c=cycles: [_spin(c) for _ in range(COPIES)])
            base_us = None
            for size in sizes_mb:
                us = (_layers_ms(weights, x, cycles, size) - spin_ms) * 1e3 / COPIES
                base_us = us if base_us is None else base_us
                row = {"shape": name, "weight_mb": round(weight_mb, 1), "gap_us": gap,
                       "prefetch_mb": min(size, weight_mb), "layer_us": round(us, 2),
                       "saved_us": round(base_us - us, 2),
                       "hbm_equiv_tb_s": round(n * k * 2 / (us * 1e-6) / 1e12, 3)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        del weights
        torch.cuda.empty_cache()
    return {"spin_cycles_per_us": per_us, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--gaps-us", default="0,3,10")
    p.add_argument("--sizes-mb", default="0,4,8,16,32,64")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    result = {
        "benchmark": "l2_prefetch_bench",
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "copies": COPIES,
        **measure([float(g) for g in a.gaps_us.split(",")],
                  [float(s) for s in a.sizes_mb.split(",")]),  # fmt: skip
    }
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
