"""`raylight bench serve`: load an OpenAI-compatible server and report latency and throughput.

Flags follow vLLM's `vllm bench serve` where the meaning is the same (vLLM's longer names, e.g.
`--random-input-len` and `--dataset-name`, are accepted as aliases).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

# serve_workload.DATASETS, spelled out so building the parser imports no numpy (a test checks).
DATASETS = ("random", "sharegpt-synthetic")


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid percentiles {text!r}; use e.g. 90,99") from exc
    if not all(0.0 <= p <= 100.0 for p in values):
        raise argparse.ArgumentTypeError("percentiles must be in [0, 100]")
    return values


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="benchmarks", description="Benchmarks against a running server."
    )
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    _add_serve(kinds)


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="load an OpenAI-compatible server with synthetic requests (as `vllm bench serve`)",
        description="Stream synthetic requests to an OpenAI-compatible server at a given rate "
        "and/or concurrency; report throughput and TTFT, TPOT, ITL and E2E latency.",
    )
    target = p.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000")
    target.add_argument("--endpoint", default="/v1/completions",
                        help="/v1/completions (token-id prompts) or /v1/chat/completions (text)")
    target.add_argument("--model", default=None,
                        help="model name in the requests (default: the server's first model)")
    target.add_argument("--api-key", default=None,
                        help="bearer token (default: $OPENAI_API_KEY if set)")
    data = p.add_argument_group("workload")
    data.add_argument("--dataset", "--dataset-name", choices=DATASETS, default="random")
    data.add_argument("--num-prompts", type=int, default=1000)
    data.add_argument("--input-len", "--random-input-len", type=int, default=1024,
                      help="prompt tokens (random dataset)")
    data.add_argument("--output-len", "--random-output-len", type=int, default=128,
                      help="output tokens (random dataset)")
    data.add_argument("--range-ratio", "--random-range-ratio", type=float, default=0.0,
                      help="lengths uniform in len * [1 - r, 1 + r], 0 <= r < 1")
    data.add_argument("--vocab-size", type=int, default=1000,
                      help="random prompt token ids are in [0, vocab-size)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--temperature", type=float, default=0.0)
    data.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                      help="let requests stop at EOS (lengths then differ from the workload's)")
    load = p.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=float("inf"),
                      help="requests per second, Poisson arrivals (default inf: all at once)")
    load.add_argument("--burstiness", type=float, default=1.0,
                      help="Gamma shape of the arrival gaps; 1 is Poisson, < 1 burstier")
    load.add_argument("--max-concurrency", type=int, default=None,
                      help="most requests in flight at once (default: no limit)")
    load.add_argument("--request-timeout", type=float, default=6 * 3600.0,
                      help="seconds before one request counts as failed")
    out = p.add_argument_group("output")
    out.add_argument("--metric-percentiles", type=_percentiles, default=(90.0, 99.0),
                     help="comma-separated percentiles reported besides mean and median")
    out.add_argument("--result-json", type=Path, default=None,
                     help="write the result here (and a PNG plot next to it with matplotlib)")
    out.add_argument("--save-detailed", action="store_true",
                     help="include every request's latencies in the JSON")
    out.add_argument("--disable-tqdm", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run_bench_serve)  # fmt: skip


def run_bench_serve(args: argparse.Namespace) -> int:
    import asyncio

    from raylight.benchmarks.serve_load import BenchConfig, run_benchmark
    from raylight.benchmarks.serve_report import format_table, hide_api_key, write_result

    try:
        config = BenchConfig(
            base_url=args.base_url, endpoint=args.endpoint, model=args.model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), dataset=args.dataset,
            num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
            range_ratio=args.range_ratio, vocab_size=args.vocab_size, seed=args.seed,
            request_rate=args.request_rate, burstiness=args.burstiness,
            max_concurrency=args.max_concurrency, temperature=args.temperature,
            ignore_eos=args.ignore_eos, request_timeout_s=args.request_timeout,
            percentiles=args.metric_percentiles, disable_tqdm=args.disable_tqdm,
        )  # fmt: skip
    except ValueError as exc:
        print(f"raylight bench serve: error: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(run_benchmark(config))
    print(format_table(result))
    if args.result_json is not None:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]]
        command = shlex.join(hide_api_key(argv))
        for path in write_result(result, args.result_json, command, args.save_detailed):
            print(f"wrote {path}")
    return 0 if result.metrics.completed > 0 else 1
