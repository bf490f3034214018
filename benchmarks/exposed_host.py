"""Host time a decode step leaves exposed, with and without async scheduling.

The model is a stand-in that keeps the GPU busy for a fixed time per step (`torch.cuda._sleep`,
calibrated) and returns fixed logits, so each engine step costs `gpu_ms` of device time plus
whatever host work (scheduling, batch building, sampling bookkeeping, update) the device has to
wait for. Exposed host time = step time - gpu_ms: without overlap it is the whole host work;
with async scheduling the host works while the device runs, and it should be near zero.

    python -m raylight.benchmarks.exposed_host --gpu-busy-ms 5 [--batch 1 64 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from raylight.benchmarks.host_overhead import FixedLogitsModel, _config, _device_name
from raylight.engine.engine_core import EngineCore
from raylight.engine.model_runner import ModelRunner
from raylight.engine.parallel import SINGLE_RANK
from raylight.engine.sampling_params import SamplingParams


class BusyModel(FixedLogitsModel):
    """FixedLogitsModel that first keeps the device busy for `cycles` clock cycles."""

    def __init__(self, vocab_size: int, cycles: int) -> None:
        super().__init__(vocab_size)
        self.cycles = cycles

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: object):
        if self.cycles:
            torch.cuda._sleep(self.cycles)
        return super().forward(input_ids, positions, ctx)


def cycles_per_ms(device: torch.device) -> float:
    """Clock cycles `torch.cuda._sleep` spins per millisecond on `device` (median of 5)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rates = []
    for _ in range(5):
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        end.synchronize()
        rates.append(10_000_000 / start.elapsed_time(end))
    return sorted(rates)[2]


def measure(batch: int, steps: int, vocab: int, params: SamplingParams, device: str,
            cycles: int, async_scheduling: bool,
            graphs: bool = False) -> dict[str, float]:  # fmt: skip
    """Mean wall time of `steps` decode steps of `batch` requests through EngineCore.step
    (decode steps replayed from CUDA graphs with `graphs`, as the engine does)."""
    config = dataclasses.replace(_config(batch, vocab, 64 + steps, device, graphs),
                                 async_scheduling=async_scheduling)  # fmt: skip
    runner = ModelRunner(config, SINGLE_RANK, model=BusyModel(vocab, cycles).to(device))
    core = EngineCore(config, runner)
    for i in range(batch):
        core.add(core.make_request(str(i), [1 + i % 7] * 16, params))
    for _ in range(3):  # prefill, then the pipeline fills
        core.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(steps):
        tokens += sum(len(d.new_token_ids) for d in core.step())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) * 1e3 / steps
    assert tokens == steps * batch, "every step must decode every request"
    return {"batch": batch, "async_scheduling": async_scheduling, "step_ms": step_ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--vocab", type=int, default=128256, help="Llama-3's by default")
    ap.add_argument("--gpu-busy-ms", type=float, default=5.0, help="device time per step")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cuda-graphs", action="store_true", help="decode steps from CUDA graphs")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if not cuda and args.gpu_busy_ms:
        raise SystemExit("--gpu-busy-ms needs a CUDA device (use 0 on the CPU)")
    rate = cycles_per_ms(torch.device(args.device)) if cuda else 0.0
    cycles = int(rate * args.gpu_busy_ms)
    cases = {
        "greedy": SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True),
        "top_p_top_k": SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=None,
                                      ignore_eos=True),  # fmt: skip
    }
    rows = []
    for name, params in cases.items():
        for b in args.batch:
            for on in (False, True):
                run = (args.vocab, params, args.device, cycles, on, args.cuda_graphs)
                measure(b, 10, *run)  # warm-up
                row = measure(b, args.steps, *run)
                row["exposed_host_ms"] = row["step_ms"] - args.gpu_busy_ms
                rows.append({"sampling": name, **row})
    report = {
        "benchmark": "exposed_host",
        "device": _device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu_busy_ms": args.gpu_busy_ms,
        "sleep_cycles_per_ms": rate,
        "vocab": args.vocab,
        "cuda_graphs": args.cuda_graphs,
        "command": "python -m raylight.benchmarks.exposed_host "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "results": rows,
        "summary": {
            f"{r['sampling']}_b{r['batch']}_{'async' if r['async_scheduling'] else 'sync'}"
            "_exposed_host_ms": round(r["exposed_host_ms"], 4)
            for r in rows
        },
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'sampling':<12} {'batch':>5} {'async':>5} {'step ms':>8} {'exposed':>8}")
    for r in rows:
        print(f"{r['sampling']:<12} {r['batch']:>5} {str(r['async_scheduling']):>5} "
              f"{r['step_ms']:>8.3f} {r['exposed_host_ms']:>8.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
