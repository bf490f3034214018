"""The issue-4 GPU benchmark in one command: ceilings, attention kernels, batch-1 latency, HF
continuous batching side by side, offline throughput (fixed lengths and a ShareGPT-like mix).

    python -m raylight.benchmarks.gpu_bench --model /tmp/llama3-8b \
        [--engine-opt attention_backend=triton] [--sections ceilings,kernels,...]

Every figure comes with the ceiling it is bound by, measured in the same run (device copy
bandwidth, bf16 GEMM rate). Sections run in the order given, each in try/except (a failure is
recorded and the next section runs), each within its share of `--time-budget-s`; the JSON is
rewritten after every section so that a run cut short still leaves its results.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raylight.benchmarks import gpu_bench_floors as floors
from raylight.benchmarks.gpu_bench_cli import SECTION_WEIGHTS, build_parser, parse_engine_opts
from raylight.benchmarks.gpu_bench_device import (
    copy_bandwidth,
    device_name,
    device_slug,
    free_memory,
    gemm_rate,
    versions,
)
from raylight.benchmarks.gpu_bench_engine import (
    EngineHolder,
    latency,
    make_prompts,
    run_requests,
    sharegpt_lengths,
)
from raylight.benchmarks.gpu_bench_kernels import KernelShapes, run_kernels
from raylight.benchmarks.gpu_bench_report import build_summary, print_table, write_plot
from raylight.engine.config import EngineOptions
from raylight.engine.model_config import ModelArchConfig, load_arch_config

RESERVE_S = 10.0  # kept back at the end for the summary, plot and JSON
MIN_SECTION_S = 5.0


@dataclass
class Bench:
    args: Any
    device: torch.device
    engine: EngineHolder | None
    arch: ModelArchConfig | None
    results: dict[str, Any] = field(default_factory=dict)

    def ceiling(self, kind: str) -> float | None:
        c = self.results.get("ceilings") or {}
        key = "bytes_per_s" if kind == "copy" else "flops_per_s"
        return (c.get(kind) or {}).get(key)

    def need_engine(self) -> EngineHolder:
        if self.engine is None or self.arch is None:
            raise RuntimeError("this section needs --model DIR")
        return self.engine


def sec_ceilings(b: Bench, deadline: float) -> dict[str, Any]:
    a, dev = b.args, b.device
    copy = copy_bandwidth(dev, a.copy_bytes, a.ceiling_iters)
    print(f"  copy: {copy['bytes_per_s'] / 1e12:.3f} TB/s (read + written)", flush=True)
    free_memory(dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gemm = gemm_rate(dev, a.gemm_n, dtype, a.ceiling_iters)
    print(f"  gemm: {gemm['flops_per_s'] / 1e12:.1f} TFLOP/s", flush=True)
    return {"copy": copy, "gemm": gemm}


def sec_kernels(b: Bench, deadline: float) -> dict[str, Any]:
    a = b.args
    shapes = KernelShapes(
        heads=a.kernel_heads, kv_heads=a.kernel_kv_heads, head_dim=a.kernel_head_dim,
        dtype=getattr(torch, a.kernel_dtype), decode_batches=a.kernel_batches,
        decode_contexts=a.kernel_contexts, prefill_lens=a.kernel_prefill_lens,
        warmup=a.kernel_warmup, iters=a.kernel_iters,
    )  # fmt: skip
    return run_kernels(shapes, b.device, b.ceiling("copy"), b.ceiling("gemm"), deadline)


def sec_latency(b: Bench, deadline: float) -> dict[str, Any]:
    a, core = b.args, b.need_engine().core()
    arch, item = core.config.arch, core.config.dtype.itemsize
    kv_item = core.config.kv_cache_dtype.itemsize
    res = latency(core, arch.vocab_size, a.latency_prompt_len, a.latency_output_len,
                  a.latency_trials, deadline)  # fmt: skip
    copy_bw, gemm = b.ceiling("copy"), b.ceiling("gemm")
    p, o = a.latency_prompt_len, a.latency_output_len
    res["decode_step_bytes"] = floors.decode_step_bytes(arch, item, 1, round(p + o / 2), kv_item)
    res["prefill_flops"] = floors.prefill_flops(arch, p)
    tpot_floor = floors.tpot_floor_s(arch, item, p, o, copy_bw, kv_item) if copy_bw else None
    res["tpot_floor_ms"] = tpot_floor * 1e3 if tpot_floor else None
    res["ttft_floor_ms"] = floors.ttft_floor_s(arch, p, gemm) * 1e3 if gemm else None
    return res


def _throughput(b: Bench, prompt_lens: list[int], output_lens: list[int], deadline: float,
                tag: str) -> dict[str, Any]:  # fmt: skip
    core = b.need_engine().core()
    prompts = make_prompts(prompt_lens, core.config.arch.vocab_size, seed=zlib.crc32(tag.encode()))
    res = run_requests(core, prompts, output_lens, deadline, tag)
    print(f"  {tag}: {res['completed']}/{res['submitted']} done in {res['elapsed_s']:.1f} s, "
          f"{res['out_tok_s'] or 0:.0f} out tok/s, {res['total_tok_s'] or 0:.0f} total tok/s",
          flush=True)  # fmt: skip
    return {"prompt_len_mean": sum(prompt_lens) / len(prompt_lens),
            "output_len_mean": sum(output_lens) / len(output_lens), **res}  # fmt: skip


def sec_offline(b: Bench, deadline: float) -> dict[str, Any]:
    a = b.args
    n = a.num_requests
    return _throughput(b, [a.prompt_len] * n, [a.output_len] * n, deadline, "offline")


def sec_sharegpt(b: Bench, deadline: float) -> dict[str, Any]:
    mml = b.need_engine().core().config.scheduler.max_model_len
    prompts, outputs = sharegpt_lengths(b.args.sharegpt_requests, mml, seed=0)
    return _throughput(b, prompts, outputs, deadline, "sharegpt")


def sec_hf(b: Bench, deadline: float) -> dict[str, Any]:
    """Sizes the workload to the time left (HF cannot be stopped midway), runs raylight on it,
    frees raylight, then runs HF's generate_batch on the same prompts."""
    from raylight.benchmarks.gpu_bench_hf import run_hf

    a, holder = b.args, b.need_engine()
    assert b.arch is not None
    left = deadline - time.perf_counter()
    hf_time = 0.65 * left - 45.0  # load + CUDA-graph warm-up of HF's manager
    n = min(a.hf_requests, max(16, int(hf_time * a.hf_est_tok_s / a.hf_output_len)))
    prompts = make_prompts([a.hf_prompt_len] * n, b.arch.vocab_size, seed=4)
    print(f"  hf workload: {n} requests x {a.hf_prompt_len} in / {a.hf_output_len} out",
          flush=True)  # fmt: skip
    dtype = holder.core().config.dtype
    rl_deadline = time.perf_counter() + 0.35 * left
    # No local reference to the engine may outlive release(): HF needs its memory.
    raylight = run_requests(holder.core(), prompts, [a.hf_output_len] * n, rl_deadline, "hfwork")
    print(f"  raylight on it: {raylight['out_tok_s'] or 0:.0f} out tok/s", flush=True)
    holder.release()
    out: dict[str, Any] = {"requests": n, "prompt_len": a.hf_prompt_len,
                           "output_len": a.hf_output_len, "raylight": raylight}  # fmt: skip
    try:
        out["hf"] = run_hf(holder.model_dir, prompts, a.hf_output_len, b.device, dtype)
        print(f"  HF generate_batch: {out['hf']['out_tok_s']:.0f} out tok/s "
              f"({out['hf']['timing_basis']})", flush=True)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - keep raylight's half of the section
        out["hf_error"] = {"error": repr(e), "traceback": traceback.format_exc()}
        print(f"  HF generate_batch FAILED: {e!r}", flush=True)
    return out


SECTIONS: dict[str, Callable[[Bench, float], dict[str, Any]]] = {
    "ceilings": sec_ceilings, "kernels": sec_kernels, "latency": sec_latency, "hf": sec_hf,
    "offline": sec_offline, "sharegpt": sec_sharegpt,
}  # fmt: skip


def _out_path(arg: Path | None, slug: str) -> Path:
    if arg is not None:
        return arg
    date = datetime.date.today().isoformat()
    return Path(os.environ.get("OUT") or ".") / f"{slug}-{date}-gpu-bench.json"


def _save(report: dict[str, Any], arch: ModelArchConfig | None, path: Path) -> None:
    report["summary"] = build_summary(report, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _run_section(name: str, b: Bench, report: dict[str, Any], deadline: float) -> None:
    t0 = time.perf_counter()
    print(f"[{name}] up to {deadline - t0:.0f} s", flush=True)
    try:
        b.results[name] = SECTIONS[name](b, deadline)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - record, go on
        report["errors"][name] = {"error": repr(e), "traceback": traceback.format_exc()}
        print(f"[{name}] FAILED: {e!r}", flush=True)
        if b.engine is not None:
            b.engine.release()  # a failed run may leave requests in it: the next one reloads
        if isinstance(e, KeyboardInterrupt):
            raise
    finally:
        report["section_s"][name] = time.perf_counter() - t0
        report["memory_after"][name] = free_memory(b.device)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    end = start + args.time_budget_s - RESERVE_S
    dev_arg = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                         else "cpu")  # fmt: skip
    device = torch.device(dev_arg)
    opts = parse_engine_opts(args.engine_opt)
    arch = load_arch_config(args.model) if args.model else None
    if arch is not None:
        opts.setdefault("max_model_len", min(8192, arch.max_position_embeddings))
    holder = EngineHolder(args.model, opts, device) if args.model else None
    backend = opts.get("attention_backend", EngineOptions().attention_backend)
    bench = Bench(args, device, holder, arch)
    name = device_name(device)
    report: dict[str, Any] = {
        "benchmark": "gpu_bench", "device": name, "versions": versions(),
        "command": [sys.executable, "-m", "raylight.benchmarks.gpu_bench", *(argv or sys.argv[1:])],
        "model": str(args.model) if args.model else None, "engine_options": opts,
        "attention_backend": backend,
        "args": {k: v for k, v in vars(args).items()}, "time_budget_s": args.time_budget_s,
        "results": bench.results, "errors": {}, "skipped": [], "section_s": {},
        "memory_after": {}, "engine_loads": holder.loads if holder else [],
    }  # fmt: skip
    path = _out_path(args.out, device_slug(name))
    print(f"gpu_bench on {name}; JSON -> {path}", flush=True)
    pending = list(args.sections)
    try:
        while pending:
            sec = pending.pop(0)
            left = end - time.perf_counter()
            if left < MIN_SECTION_S:
                report["skipped"].append(sec)
                print(f"[{sec}] skipped: {left:.0f} s left of the budget", flush=True)
                continue
            share = SECTION_WEIGHTS[sec] / sum(SECTION_WEIGHTS[s] for s in [sec, *pending])
            _run_section(sec, bench, report, time.perf_counter() + left * share)
            _save(report, arch, path)
    except KeyboardInterrupt:
        report["skipped"].extend(pending)
        report["interrupted"] = True
    if holder is not None:
        holder.release()
    report["total_s"] = time.perf_counter() - start
    _save(report, arch, path)
    png = path.with_suffix(".png")
    try:
        report["plot"] = write_plot(report, png)
    except Exception as e:  # noqa: BLE001 - the JSON matters more than the picture
        report["plot"] = f"failed: {e!r}"
    _save(report, arch, path)
    print(f"plot: {report['plot']}\nJSON: {path}", flush=True)
    print_table(report["summary"])
    return report


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
