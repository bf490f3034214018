"""Runs one workload several times on one engine and prints each run's output tok/s: a first
run much slower than the rest means start-up costs (e.g. Triton JIT compiles for new shapes)
are landing inside measurements.

    python -m raylight.benchmarks.repeat_workload --model DIR [--requests 252 --prompt-len 512
        --output-len 128 --repeats 3] [--engine-opt key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from raylight.benchmarks.gpu_bench_cli import parse_engine_opts
from raylight.benchmarks.gpu_bench_engine import make_prompts, run_requests
from raylight.engine.llm import LLM


def compiled_kernels() -> set[str]:
    """Names of the kernels in Triton's on-disk cache (one JSON of metadata per compile)."""
    root = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    return {f"{p.parent.name[:8]}:{p.stem}" for p in root.glob("*/*.json")
            if not p.name.startswith("__grp__")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=252)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engine-opt", action="append", default=[])
    args = p.parse_args(argv)
    options = {"max_model_len": 2048, **parse_engine_opts(args.engine_opt)}
    llm = LLM(args.model, progress=False, **options)
    vocab = llm.core.config.arch.vocab_size
    seen = compiled_kernels()
    for r in range(args.repeats):
        prompts = make_prompts([args.prompt_len] * args.requests, vocab, seed=r)
        t = time.perf_counter()
        run_requests(llm.core, prompts, [args.output_len] * args.requests, t + 600, f"r{r}")
        dt = time.perf_counter() - t
        tokens = args.requests * args.output_len
        now = compiled_kernels()
        print(f"run {r}: {dt:.2f} s, {tokens / dt:.0f} out tok/s, compiled during it: "
              f"{sorted(k.split(':')[1] for k in now - seen)}", flush=True)  # fmt: skip
        seen = now
    return 0


if __name__ == "__main__":
    sys.exit(main())
