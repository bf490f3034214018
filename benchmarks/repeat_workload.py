"""Runs one workload several times on one engine and prints each run's output tok/s: a first
run much slower than the rest means start-up costs (e.g. Triton JIT compiles for new shapes)
are landing inside measurements.

    python -m raylight.benchmarks.repeat_workload --model DIR [--requests 252 --prompt-len 512
        --output-len 128 --repeats 3] [--engine-opt key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time

from raylight.benchmarks.gpu_bench_cli import parse_engine_opts
from raylight.benchmarks.gpu_bench_engine import make_prompts, run_requests
from raylight.engine.llm import LLM


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
    for r in range(args.repeats):
        prompts = make_prompts([args.prompt_len] * args.requests, vocab, seed=r)
        t = time.perf_counter()
        out = run_requests(llm.core, prompts, [args.output_len] * args.requests, t + 600, f"r{r}")
        dt = time.perf_counter() - t
        tokens = args.requests * args.output_len
        print(f"run {r}: {dt:.2f} s, {tokens / dt:.0f} out tok/s  {out.get('steps', '')}",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
