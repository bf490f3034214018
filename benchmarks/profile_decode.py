"""Where a decode step's time goes on a GPU: torch.profiler over steady decode steps of a real
model at a few batch sizes, summed by kernel, plus the wall time per step.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.profile_decode --model DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from raylight.engine.llm import LLM
from raylight.engine.sampling_params import SamplingParams


def _steady_decode(llm: LLM, batch: int, prompt_len: int) -> list[list[int]]:
    """Adds `batch` requests and steps until all are decoding; returns nothing but the state."""
    core = llm.core
    params = SamplingParams(temperature=0.0, max_tokens=2048, ignore_eos=True)
    for i in range(batch):
        prompt = [(7 * i + j) % 1000 + 10 for j in range(prompt_len)]
        core.add(core.make_request(f"p{batch}-{i}", prompt, params, 0))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in core.scheduler.running) or \
            core.scheduler.waiting:  # fmt: skip
        core.step()
    return []


def profile_batch(llm: LLM, batch: int, prompt_len: int, steps: int) -> dict:
    _steady_decode(llm, batch, prompt_len)
    core = llm.core
    for _ in range(5):
        core.step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        core.step()
    torch.cuda.synchronize()
    step_ms = 1e3 * (time.perf_counter() - t) / steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            core.step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if dev_us > 0 and e.key and not e.key.startswith("ProfilerStep"):
            rows.append({"name": e.key[:90], "device_ms_per_step": dev_us / 1e3 / steps,
                         "calls_per_step": e.count / steps})  # fmt: skip
    rows.sort(key=lambda r: -r["device_ms_per_step"])
    for req in list(core.scheduler.running):
        core.abort(req.request_id)
    return {"batch": batch, "prompt_len": prompt_len, "wall_ms_per_step": step_ms,
            "top_device_ops": rows[:25]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 64, 256])  # fmt: skip
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    llm = LLM(args.model, progress=False, max_model_len=4096, max_num_seqs=max(args.batches))
    out = {"device": torch.cuda.get_device_name(), "command": " ".join(sys.argv), "runs": []}
    for batch in args.batches:
        run = profile_batch(llm, batch, args.prompt_len, args.steps)
        out["runs"].append(run)
        print(f"batch {batch}: {run['wall_ms_per_step']:.2f} ms/step", flush=True)
        for r in run["top_device_ops"][:12]:
            print(f"  {r['device_ms_per_step']:8.3f} ms  x{r['calls_per_step']:5.0f}  {r['name']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
