"""Where kernels/fused_mlp.py's time goes on the GPU: the kernel against source-edited copies of
itself without the atomics (plain stores) and without the gate_up loop (a down loop without
gate_up is kept; the reverse is removed by the compiler as dead code), each timed over 32
distinct Llama-3.1-8B MLP layers in one CUDA graph.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.fused_mlp_diag [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

from raylight.benchmarks.fused_mlp_bench import EPS, HIDDEN, INTER, capture, make_layers, time_graph
from raylight.benchmarks.gpu_bench_device import copy_bandwidth, device_name, versions
from raylight.kernels import fused_mlp as base

EDITS = {
    "full": [],
    "stores_not_atomics": [("tl.atomic_add(acc_ptr", "tl.store(acc_ptr"),
                           (', y,\n                      mask=m_ok[:, None], sem="relaxed")',
                            ', y,\n                      mask=m_ok[:, None])')],
    "no_gate_loop": [("    for k0 in tl.range(0, H, BLOCK_K, num_stages=STAGES):",
                      "    for k0 in tl.range(0, 0, BLOCK_K, num_stages=STAGES):")],
}


def load_variant(name: str):
    src = Path(base.__file__).read_text()
    for old, new in EDITS[name]:
        if old not in src:
            raise RuntimeError(f"{name}: edit target not found: {old!r}")
        src = src.replace(old, new)
    path = Path(tempfile.mkdtemp()) / f"fused_mlp_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"fused_mlp_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda")
    bw = copy_bandwidth(device, 2 << 30, 20)
    layers = make_layers(32, device)
    h = torch.randn(1, HIDDEN, device=device).to(torch.bfloat16)
    res = torch.randn(1, HIDDEN, device=device).to(torch.bfloat16)
    acc = torch.zeros(1, HIDDEN, device=device)
    out = {}
    for cfg in (base.FusedMLPConfig(32, 128, 64, 4, 3), base.FusedMLPConfig(16, 256, 64, 4, 3)):
        for name in EDITS:
            mod = load_variant(name)

            def body(mod=mod, cfg=cfg):
                for layer in layers:
                    mod.fused_mlp(h, res, layer.post_norm, EPS, layer.gate_up, layer.down, acc,
                                  cfg)  # fmt: skip

            us = time_graph(capture(body), 20) * 1e3 / len(layers)
            key = f"{name}_b{cfg.block}_k{cfg.block_k}"
            out[key] = us
            print(f"{key:>36}: {us:8.2f} us/layer", flush=True)
    floor = (3 * INTER * HIDDEN * 2) / bw["bytes_per_s"] * 1e6
    result = {"benchmark": "fused_mlp_diag", "device": device_name(device),
              "versions": versions(), "command": " ".join(sys.argv), "copy_bandwidth": bw,
              "floor_us_per_layer": floor, "us_per_layer": out}  # fmt: skip
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
