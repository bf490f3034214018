"""The barrier-free one-kernel decode MLP (kernels/fused_mlp.py) against the kernels it replaces,
as the decode graph runs them: 32 layers of distinct Llama-3.1-8B-shaped MLP weights (so nothing
is served from L2) chained in one CUDA graph, each layer's output the next one's input.

Per layer, both include the next layer's input norm (the fused path's output is an fp32
accumulator that this norm rounds and clears):
- chain: fused_add_rmsnorm -> gate_up -> silu_and_mul -> down -> fused_add_rmsnorm, the linears
  as engine/layers/linear.py picks them (skinny kernel or cuBLAS);
- fused: fused_mlp -> accumulated_add_rmsnorm, for each config of the sweep.
Reported per layer in microseconds and against the MLP weight bytes over the copy bandwidth
measured in the same run; each config is also checked against the reference and the chain.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.fused_mlp_bench [--rows 1,2]
        [--layers 32] [--replays 20] [--rounds 3] [--out FILE] [--best-out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from raylight.benchmarks.gpu_bench_device import copy_bandwidth, device_name, versions
from raylight.engine.layers.linear import linear
from raylight.kernels.activation import silu_and_mul
from raylight.kernels.fused_mlp import FusedMLPConfig, fused_mlp, fused_mlp_ref
from raylight.kernels.rmsnorm import accumulated_add_rmsnorm, fused_add_rmsnorm

HIDDEN, INTER, EPS = 4096, 14336, 1e-5
C = FusedMLPConfig
# (rows per program, gate_up K step, down output step, warps, stages): spill-free at sm_90
# with Triton 3.6 (tests/test_kernels_sm90_compile.py).
# The first H200 sweep (benchmarks/results/h200-2026-12-02-fused-mlp-bench-1.json) was fastest
# with the fewest, largest tiles per program step: larger ones here.
SWEEP = [C(16, 256, 64, 4, 3), C(16, 512, 256, 4, 3), C(16, 1024, 512, 8, 3),
         C(32, 256, 256, 4, 3), C(32, 512, 256, 8, 3), C(16, 512, 512, 4, 2),
         C(16, 256, 256, 4, 4), C(32, 256, 128, 4, 3), C(16, 512, 256, 8, 3),
         C(16, 1024, 256, 4, 2)]


@dataclasses.dataclass
class Layer:
    post_norm: torch.Tensor
    next_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def make_layers(n: int, device: torch.device) -> list[Layer]:
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(torch.bfloat16)

    return [Layer(1 + rand(HIDDEN, scale=0.1), 1 + rand(HIDDEN, scale=0.1),
                  rand(2 * INTER, HIDDEN, scale=0.02), rand(HIDDEN, INTER, scale=0.02))
            for _ in range(n)]  # fmt: skip


def chain_layer(h, res, layer: Layer):
    x, res = fused_add_rmsnorm(h, res, layer.post_norm, EPS)
    gate_up = linear(x, layer.gate_up, None, skinny=True, pdl=False)
    y = linear(silu_and_mul(gate_up), layer.down, None, skinny=True, pdl=False)
    return fused_add_rmsnorm(y, res, layer.next_norm, EPS)


def fused_layer(h, res, layer: Layer, acc: torch.Tensor, config: FusedMLPConfig):
    res = fused_mlp(h, res, layer.post_norm, EPS, layer.gate_up, layer.down, acc, config)
    return accumulated_add_rmsnorm(acc, res, layer.next_norm, EPS)


def capture(body) -> torch.cuda.CUDAGraph:
    body()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def time_graph(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    """Milliseconds per replay."""
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def check(layer: Layer, m: int, config: FusedMLPConfig, device) -> dict:
    """Eager launches against the reference and the chain (relative max errors)."""
    gen = torch.Generator(device=device).manual_seed(m)
    h = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
    res = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
    acc = torch.zeros(m, HIDDEN, device=device)
    summed = fused_mlp(h, res, layer.post_norm, EPS, layer.gate_up, layer.down, acc, config)
    want, want_sum = fused_mlp_ref(h, res, layer.post_norm, EPS, layer.gate_up, layer.down)
    scale = want.abs().max().item()
    out = {"vs_ref": (acc - want).abs().max().item() / scale,
           "residual_exact": bool(torch.equal(summed, want_sum))}  # fmt: skip
    x_f, res_f = accumulated_add_rmsnorm(acc, summed, layer.next_norm, EPS)
    x_c, res_c = chain_layer(h, res, layer)
    out["vs_chain"] = (x_f.float() - x_c.float()).abs().max().item() / x_c.abs().max().item()
    out["acc_cleared"] = int(torch.count_nonzero(acc)) == 0
    out["ok"] = out["vs_ref"] < 2e-2 and out["residual_exact"] and out["acc_cleared"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--best-out", type=Path, default=None,
                   help="write the first --rows entry's fastest config (a JSON list)")
    a = p.parse_args(argv)
    device = torch.device("cuda")
    bw = copy_bandwidth(device, 2 << 30, 20)
    layers = make_layers(a.layers, device)
    weight_bytes = (2 * INTER * HIDDEN + HIDDEN * INTER) * 2
    floor_us = weight_bytes / bw["bytes_per_s"] * 1e6
    results = []
    for m in [int(r) for r in a.rows.split(",")]:
        gen = torch.Generator(device=device).manual_seed(1)
        h0 = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
        res0 = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
        acc = torch.zeros(m, HIDDEN, device=device)

        def chain_body(h=h0, res=res0):
            for layer in layers:
                h, res = chain_layer(h, res, layer)

        def fused_body(config, h=h0, res=res0, acc=acc):
            for layer in layers:
                h, res = fused_layer(h, res, layer, acc, config)

        graphs = {"chain": capture(chain_body)}
        checks, configs = {}, {}
        for cfg in SWEEP:
            name = (f"fused_b{cfg.block}_k{cfg.block_k}_n{cfg.block_n}_w{cfg.num_warps}"
                    f"_s{cfg.num_stages}")
            try:
                checks[name] = check(layers[0], m, cfg, device)
                graphs[name] = capture(lambda cfg=cfg: fused_body(cfg))
            except Exception as e:  # a config that does not compile (shared memory) is reported
                checks[name] = {"error": repr(e)[:300]}
            configs[name] = dataclasses.astuple(cfg)
            print(name, checks[name], flush=True)
        times: dict[str, list[float]] = {n: [] for n in graphs}
        for _ in range(a.rounds):
            for n, g in graphs.items():
                times[n].append(time_graph(g, a.replays) * 1e3 / a.layers)
        med = {n: statistics.median(t) for n, t in times.items()}
        for n in med:
            print(f"rows {m} {n:>22}: {med[n]:7.2f} us/layer  ({med[n] / floor_us:.3f} x floor "
                  f"{floor_us:.1f})", flush=True)  # fmt: skip
        best = min((n for n in med if n != "chain"), key=med.get, default=None)
        results.append({"rows": m, "us_per_layer": med, "rounds_us": times, "checks": checks,
                        "best": best, "chain_us": med["chain"],
                        "best_us": med.get(best), "best_config": configs.get(best)})  # fmt: skip
        del graphs
        torch.cuda.empty_cache()
    out = {
        "benchmark": "fused_mlp_bench",
        "device": device_name(device),
        "versions": versions(),
        "command": " ".join(sys.argv),
        "copy_bandwidth": bw,
        "mlp_weight_bytes": weight_bytes,
        "floor_us_per_layer": floor_us,
        "what": "us per layer: MLP half + the next input norm, 32 distinct layers in one graph",
        "results": results,
    }
    if a.out is not None:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    if a.best_out is not None and results and results[0]["best_config"] is not None:
        a.best_out.write_text(json.dumps(results[0]["best_config"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
