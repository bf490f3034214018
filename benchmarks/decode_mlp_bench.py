"""The one-kernel decode MLP (kernels/decode_mlp.py) against the four kernels it replaces, as the
decode graph runs them: 32 layers of distinct Llama-3.1-8B-shaped MLP weights (so nothing is
served from L2) chained in one CUDA graph, each layer's output the next one's input.

Chain: fused_add_rmsnorm -> gate_up (engine/layers/linear.py's choice: skinny kernel or cuBLAS)
-> silu_and_mul -> down. One kernel: decode_mlp with each config of a sweep. The same for the
layer tail (decode_layer_tail: o_proj, the MLP, the next norm and qkv) against its chain.
Reported per layer in microseconds and against the layer's weight bytes over the copy bandwidth
measured in the same run. Also checks both kernels (with their grid barriers, which only the
GPU exercises) against the torch references and the chains.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.decode_mlp_bench [--rows 1,2,4,8]
        [--layers 32] [--replays 20] [--rounds 3] [--smoke] [--out FILE] [--best-out FILE]
    (--rows: default 1; the kernel takes up to 8)

--smoke runs one eager launch and its check only (a hung barrier shows as a timeout there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch
import triton

from raylight.benchmarks.gpu_bench_device import copy_bandwidth, device_name, versions
from raylight.engine.layers.linear import linear
from raylight.kernels.activation import silu_and_mul
from raylight.kernels.decode_mlp import (
    DecodeMLPConfig,
    decode_layer_tail,
    decode_layer_tail_ref,
    decode_mlp,
    decode_mlp_ref,
    new_barrier,
)
from raylight.kernels.rmsnorm import fused_add_rmsnorm

HIDDEN, INTER, QKV, EPS = 4096, 14336, 6144, 1e-5

C = DecodeMLPConfig
# (programs per SM, gate_up tile rows, K; down tile rows, K; warps, stages, cooperative): more
# than one program per SM runs as a cooperative grid. Shared memory per program: the larger phase's
# stages (gate_up loads two tiles) times programs per SM stays under 228 KB.
SWEEP = [  # around the 12-02 sweeps' best, which is SWEEP[0] (DEFAULT_CONFIG)
    C(4, 4, 1024, 4, 1024, 2, 3, True),
    C(4, 2, 2048, 4, 1024, 2, 3, True),
    C(4, 4, 1024, 2, 2048, 2, 3, True),
    C(4, 4, 1024, 8, 512, 2, 3, True),
    C(4, 4, 1024, 4, 2048, 2, 3, True),
    C(4, 4, 1024, 4, 1024, 4, 3, True),
    C(3, 4, 1024, 4, 1024, 2, 4, True),
    C(2, 8, 1024, 8, 1024, 4, 3, True),
    C(5, 4, 512, 4, 1024, 2, 4, True),
    C(6, 4, 512, 4, 512, 2, 4, True),
]
TAIL_SWEEP = SWEEP[:6]


@dataclasses.dataclass
class Layer:
    norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    barrier: torch.Tensor
    o: torch.Tensor  # the layer tail's (--tail)
    qkv: torch.Tensor


def make_layers(n: int, device: torch.device) -> list[Layer]:
    gen = torch.Generator(device=device).manual_seed(0)
    layers = []
    for _ in range(n):
        def rand(*shape: int, scale: float) -> torch.Tensor:
            return (torch.randn(*shape, generator=gen, device=device) * scale).to(torch.bfloat16)

        layers.append(Layer(1 + rand(HIDDEN, scale=0.1), rand(2 * INTER, HIDDEN, scale=0.02),
                            rand(HIDDEN, INTER, scale=0.02), new_barrier(device),
                            rand(HIDDEN, HIDDEN, scale=0.02),
                            rand(QKV, HIDDEN, scale=0.02)))  # fmt: skip
    return layers


def chain_layer(h, res, layer: Layer, config: DecodeMLPConfig | None):
    if config is None:
        x, res = fused_add_rmsnorm(h, res, layer.norm, EPS)
        gate_up = linear(x, layer.gate_up, None, skinny=True, pdl=False)
        return linear(silu_and_mul(gate_up), layer.down, None, skinny=True, pdl=False), res
    return decode_mlp(h, res, layer.norm, EPS, layer.gate_up, layer.down, layer.barrier, config)


def tail_layer(attn, res, layer: Layer, config: DecodeMLPConfig | None):
    """o_proj through the next layer's norm + qkv (the layer's own norm weight stands in for
    the next one's); the attention output is taken as the first HIDDEN of qkv."""
    if config is None:
        h = linear(attn, layer.o, None, skinny=True, pdl=False)
        y, res = chain_layer(h, res, layer, None)
        x, res = fused_add_rmsnorm(y, res, layer.norm, EPS)
        return linear(x, layer.qkv, None, skinny=True, pdl=False)[:, :HIDDEN], res
    qkv, res = decode_layer_tail(attn, res, layer.o, layer.norm, EPS, layer.gate_up, layer.down,
                                 layer.barrier, layer.norm, EPS, layer.qkv, config)  # fmt: skip
    return qkv[:, :HIDDEN], res


def capture(layers: list[Layer], h0, res0, config, tail: bool = False):
    step = tail_layer if tail else chain_layer

    def body():
        h, res = h0, res0
        for layer in layers:
            h, res = step(h, res, layer, config)
        return h

    body()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()
    return graph, lambda: out


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


def check(layer: Layer, m: int, config: DecodeMLPConfig, device) -> dict:
    """One eager launch against the reference and against the chain (relative max error)."""
    gen = torch.Generator(device=device).manual_seed(m)
    h = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
    res = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
    out = {}
    for rep in range(3):  # the barrier is reused across launches
        y, res_out = chain_layer(h, res, layer, config)
        torch.cuda.synchronize()
        y_ref, res_ref = decode_mlp_ref(h, res, layer.norm, EPS, layer.gate_up, layer.down)
        y_chain, _ = chain_layer(h, res, layer, None)
        scale = y_ref.float().abs().max().item()
        out = {"rel_err_vs_ref": (y.float() - y_ref.float()).abs().max().item() / scale,
               "rel_err_chain_vs_ref": (y_chain.float() - y_ref.float()).abs().max().item() / scale,
               "residual_exact": bool(torch.equal(res_out, res_ref)),
               "barrier_state": layer.barrier.tolist()}  # fmt: skip
        # bf16: a few roundings of the ~1/256 relative step; the chain's own error is reported
        if out["rel_err_vs_ref"] > 5e-2 or out["barrier_state"][0]:
            raise AssertionError(f"decode_mlp wrong at m={m}, launch {rep}: {out}")
    return out


def check_tail(layer: Layer, m: int, config: DecodeMLPConfig, device) -> dict:
    """decode_layer_tail (three barriers) against its reference, eager, three launches."""
    gen = torch.Generator(device=device).manual_seed(m)
    attn = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
    res = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
    args = (attn, res, layer.o, layer.norm, EPS, layer.gate_up, layer.down)
    nxt = (layer.norm, EPS, layer.qkv)
    out = {}
    for rep in range(3):
        qkv, res_out = decode_layer_tail(*args, layer.barrier, *nxt, config=config)
        torch.cuda.synchronize()
        want, want_res = decode_layer_tail_ref(*args, *nxt)
        scale = want.float().abs().max().item()
        out = {"rel_err_vs_ref": (qkv.float() - want.float()).abs().max().item() / scale,
               "residual_rel_err": (res_out.float() - want_res.float()).abs().max().item()
               / want_res.float().abs().max().item(),
               "barrier_state": layer.barrier.tolist()}  # fmt: skip
        if out["rel_err_vs_ref"] > 5e-2 or out["barrier_state"][0]:
            raise AssertionError(f"decode_layer_tail wrong at m={m}, launch {rep}: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--best-out", type=Path, help="write the best config at batch 1 as JSON")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    rows = [int(r) for r in args.rows.split(",")]
    layers = make_layers(1 if args.smoke else args.layers, device)
    checks: dict[str, dict] = {}
    for m in rows:
        for kind, fn in (("mlp", check), ("tail", check_tail)):
            try:
                checks[f"{kind}_m{m}"] = fn(layers[0], m, SWEEP[0], device)
            except Exception as exc:  # a wrong result or a refused launch: fatal in --smoke
                if args.smoke:
                    raise
                checks[f"{kind}_m{m}"] = {"error": repr(exc)[:300]}
    print(json.dumps({"checks": checks}), flush=True)
    if args.smoke:
        return 0
    bw = copy_bandwidth(device, 2 << 30, 10)["bytes_per_s"]
    layer_bytes = {"mlp": 3 * HIDDEN * INTER * 2, "tail": (3 * INTER + HIDDEN + QKV) * HIDDEN * 2}
    floor_us = {k: b / bw * 1e6 for k, b in layer_bytes.items()}
    report = {"device": device_name(device), "versions": versions(), "triton": triton.__version__,
              "command": " ".join(sys.argv), "copy_bw_tb_s": bw / 1e12,
              "layer_weight_bytes": layer_bytes, "layer_floor_us": floor_us, "checks": checks,
              "results": []}  # fmt: skip
    for m in rows:
        gen = torch.Generator(device=device).manual_seed(100 + m)
        h0 = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16) * 0.1
        res0 = torch.randn(m, HIDDEN, generator=gen, device=device).to(torch.bfloat16)
        for kind, sweep in (("mlp", SWEEP), ("tail", TAIL_SWEEP)):
            graphs, outs = {}, {}
            for cfg in [None, *sweep]:
                key = "chain" if cfg is None else json.dumps(dataclasses.asdict(cfg))
                try:
                    graphs[key], outs[key] = capture(layers, h0, res0, cfg, tail=kind == "tail")
                except Exception as exc:  # a config the compiler or the launch refuses
                    report["results"].append({"m": m, "kind": kind, "config": key,
                                              "error": repr(exc)[:300]})  # fmt: skip
                    print(f"m={m} {kind} {key}: {exc!r}"[:300], flush=True)
            samples: dict[str, list[float]] = {k: [] for k in graphs}
            for _ in range(args.rounds):
                for key, graph in graphs.items():
                    samples[key].append(time_graph(graph, args.replays))
            chain_out = outs["chain"]().float()
            for key in graphs:
                us = statistics.median(samples[key]) * 1e3 / len(layers)
                diff = (outs[key]().float() - chain_out).abs().max().item()
                report["results"].append({
                    "m": m, "kind": kind, "config": key, "us_per_layer": us,
                    "floor_frac": floor_us[kind] / us, "samples_ms": samples[key],
                    "max_abs_diff_vs_chain_after_layers": diff})  # fmt: skip
                print(f"m={m} {kind} {us:7.2f} us/layer ({floor_us[kind] / us:.3f} of floor) "
                      f"{key}", flush=True)
            del graphs, outs
            torch.cuda.empty_cache()
    ones = [r for r in report["results"] if r["m"] == 1 and "us_per_layer" in r
            and r["config"] != "chain" and r["kind"] == "mlp"]  # fmt: skip
    best = min(ones, key=lambda r: r["us_per_layer"])
    report["best_m1"] = best
    if args.best_out:
        args.best_out.write_text(best["config"])
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text)
    print(f"best at m=1: {best['us_per_layer']:.2f} us/layer {best['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
