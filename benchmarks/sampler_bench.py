"""Device time of one sampling step (engine/sampler.py, up to the one copy to the host) per
batch size and sampling configuration, the top-p configurations through both the sorted path
and the radix-select kernel (kernels/top_p.py). Random logits over Llama-3's vocabulary.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.sampler_bench [--out FILE]
        [--batch 1 16 64 256] [--vocab 128256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from raylight.benchmarks.gpu_bench_device import time_ms
from raylight.engine.request import PENDING, Request
from raylight.engine.sampler import Sampler
from raylight.engine.sampling_inputs import build_sampling_inputs
from raylight.engine.sampling_params import SamplingParams

CASES: dict[str, SamplingParams] = {
    "greedy": SamplingParams(temperature=0.0),
    "temperature": SamplingParams(temperature=0.8),
    "top_k": SamplingParams(temperature=0.8, top_k=50),
    "top_p": SamplingParams(temperature=0.8, top_p=0.9),
    "top_p_top_k": SamplingParams(temperature=0.8, top_p=0.9, top_k=50),
}


def _requests(params: SamplingParams, batch: int) -> list[Request]:
    """Requests as the sampler sees them mid-decode: one PENDING token each, own seeds."""
    reqs = []
    for i in range(batch):
        req = Request(request_id=f"r{i}", prompt_token_ids=[1, 2, 3], params=params,
                      max_tokens=64, sample_seed=i, stop_token_ids=frozenset(),
                      output_token_ids=[PENDING])  # fmt: skip
        req.num_pending = 1
        reqs.append(req)
    return reqs


def measure(batch: int, vocab: int, name: str, kernel: bool, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(batch)
    logits = torch.randn(batch, vocab, device=device, generator=gen) * 3
    inputs = build_sampling_inputs(_requests(CASES[name], batch), vocab, device)
    sampler = Sampler(top_p_kernel=kernel)
    ms = time_ms(lambda: sampler.sample(logits, inputs), device, warmup=3, iters=20)
    return {"sampling": name, "top_p_kernel": kernel, "batch": batch, "vocab": vocab,
            "median_ms": statistics.median(ms), "min_ms": min(ms)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for name in CASES:
        for kernel in (False, True) if "top_p" in name else (False,):
            for batch in args.batch:
                rows.append(measure(batch, args.vocab, name, kernel, device))
                r = rows[-1]
                print(f"{name:12s} kernel={kernel!s:5s} b{batch:<4d} {r['median_ms']:.3f} ms",
                      flush=True)  # fmt: skip
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report = {"benchmark": "sampler_bench", "device": name, "torch": torch.__version__,
              "command": " ".join(sys.argv), "results": rows}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
