"""Where a decode step's time goes on a GPU: torch.profiler over steady decode steps of a real
model at a few batch sizes, summed by kernel, plus the wall time per step and the device's idle
time between ops (the gaps between graph replays, the eager LM head, sampling and copies).
With --prefill, the same for the prefill step of one prompt (the TTFT path) instead.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.profile_decode --model DIR [--out FILE]
        [--prefill] [--engine-opt kv_cache_dtype=fp8 ...]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from raylight.benchmarks.gpu_bench_cli import parse_engine_opts
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


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_ops(prof, steps: int) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if dev_us > 0 and e.key and not e.key.startswith("ProfilerStep"):
            rows.append({"name": e.key[:90], "device_ms_per_step": dev_us / 1e3 / steps,
                         "calls_per_step": e.count / steps})  # fmt: skip
    rows.sort(key=lambda r: -r["device_ms_per_step"])
    return rows[:25]


def device_timeline(spans: list[tuple[str, float, float]], steps: int, top: int = 12) -> dict:
    """Where the device sat idle: spans (name, start_us, end_us) of every device op (kernels,
    copies) of `steps` steps -> per step the span from the first op's start to the last op's
    end, the time no op ran, and the largest idle gaps summed by the pair of ops around them
    (the op before, the op after). Ops may overlap (copy engines beside kernels); the gap
    after an op counts from the latest end seen so far."""
    if not spans:
        return {"span_ms_per_step": None, "idle_ms_per_step": None, "top_gaps": []}
    spans = sorted(spans, key=lambda s: s[1])
    idle = 0.0
    gaps: dict[tuple[str, str], list[float]] = {}
    last_name, last_end = spans[0][0], spans[0][2]
    for name, start, end in spans[1:]:
        if start > last_end:
            idle += start - last_end
            gaps.setdefault((last_name[:60], name[:60]), []).append(start - last_end)
        if end >= last_end:
            last_name, last_end = name, end
    rows = [{"after": a, "before": b, "idle_us_per_step": sum(g) / steps,
             "count_per_step": len(g) / steps} for (a, b), g in gaps.items()]  # fmt: skip
    rows.sort(key=lambda r: -r["idle_us_per_step"])
    span = max(e for _, _, e in spans) - spans[0][1]
    return {"span_ms_per_step": span / 1e3 / steps, "idle_ms_per_step": idle / 1e3 / steps,
            "top_gaps": rows[:top]}  # fmt: skip


def _device_spans(prof) -> list[tuple[str, float, float]]:
    from torch.autograd import DeviceType

    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == DeviceType.CUDA]  # fmt: skip


def profile_prefill(llm: LLM, prompt_len: int, trials: int) -> dict:
    """One prompt at a time: the wall time of its prefill step (the first step after adding it,
    synchronised), then the same under the profiler, summed over `trials` prompts."""
    core = llm.core
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)

    def one(i: int) -> float:
        prompt = [(11 * i + 3 * j) % 1000 + 10 for j in range(prompt_len)]
        core.add(core.make_request(f"prefill-{i}", prompt, params, 0))
        _sync()
        t = time.perf_counter()
        core.step()
        _sync()
        ms = 1e3 * (time.perf_counter() - t)
        while core.scheduler.running or core.scheduler.waiting:
            core.step()
        return ms

    for i in range(2):  # compile and warm the prefill shapes
        one(-1 - i)
    wall = sorted(one(i) for i in range(trials))
    host = cProfile.Profile()
    host.enable()
    for i in range(trials):
        one(2 * trials + i)
    host.disable()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(trials):
            one(trials + i)
        _sync()
    return {"prompt_len": prompt_len, "prefill_step_wall_ms": wall,
            "prefill_step_wall_ms_median": wall[len(wall) // 2],
            "top_device_ops": _device_ops(prof, trials),
            "top_host_functions": _host_functions(host, trials)}  # fmt: skip


def _host_functions(host: cProfile.Profile, trials: int) -> list[dict]:
    """Python functions by cumulative host time per prompt (cProfile over whole prompts: the
    prefill step, then the steps that finish the request): where a wall time above the device
    time goes."""
    stats = pstats.Stats(host).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    rows = [{"function": f"{Path(f).name}:{line}({name})", "cum_ms_per_prompt": 1e3 * ct / trials,
             "self_ms_per_prompt": 1e3 * tt / trials, "calls_per_prompt": nc / trials}
            for (f, line, name), (_, nc, tt, ct, _) in stats.items()]  # fmt: skip
    rows.sort(key=lambda r: -r["cum_ms_per_prompt"])
    return rows[:40]


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
    rows = _device_ops(prof, steps)
    for req in list(core.scheduler.running):
        core.abort(req.request_id)
    return {"batch": batch, "prompt_len": prompt_len, "wall_ms_per_step": step_ms,
            "top_device_ops": rows,
            "device_timeline": device_timeline(_device_spans(prof), steps)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 64, 256])  # fmt: skip
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--prefill", action="store_true",
                   help="profile one prompt's prefill step instead of decode steps")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    opts = {"max_model_len": 4096, "max_num_seqs": max(args.batches),
            **parse_engine_opts(args.engine_opt)}  # fmt: skip
    llm = LLM(args.model, progress=False, **opts)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = {"device": device, "command": " ".join(sys.argv),
           "engine_options": {k: str(v) for k, v in opts.items()}, "runs": []}  # fmt: skip
    if args.prefill:
        run = profile_prefill(llm, args.prompt_len, args.steps)
        out["runs"].append(run)
        print(f"prefill {args.prompt_len}: {run['prefill_step_wall_ms_median']:.2f} ms", flush=True)
        for r in run["top_device_ops"][:15]:
            print(f"  {r['device_ms_per_step']:8.3f} ms  x{r['calls_per_step']:5.0f}  {r['name']}")
        for r in run["top_host_functions"][:25]:
            print(f"  host {r['cum_ms_per_prompt']:8.3f} ms cum {r['self_ms_per_prompt']:8.3f} self"
                  f"  x{r['calls_per_prompt']:6.0f}  {r['function']}")
    for batch in [] if args.prefill else args.batches:
        run = profile_batch(llm, batch, args.prompt_len, args.steps)
        out["runs"].append(run)
        print(f"batch {batch}: {run['wall_ms_per_step']:.2f} ms/step", flush=True)
        for r in run["top_device_ops"][:12]:
            print(f"  {r['device_ms_per_step']:8.3f} ms  x{r['calls_per_step']:5.0f}  {r['name']}")
        tl = run["device_timeline"]
        if tl["span_ms_per_step"] is not None:
            print(f"  device span {tl['span_ms_per_step']:.3f} ms/step, idle "
                  f"{tl['idle_ms_per_step']:.3f} ms/step; largest gaps:")
            for g in tl["top_gaps"]:
                print(f"  {g['idle_us_per_step']:8.2f} us x{g['count_per_step']:4.1f}  "
                      f"{g['after']} -> {g['before']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
