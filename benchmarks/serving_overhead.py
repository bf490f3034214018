"""What the serving path (HTTP, Ray Serve, ingress, router, detokenizer) costs on top of the
engine: the same workload through the engine's own async API in this process ("offline") and
through a live `raylight` app on 127.0.0.1 driven by `raylight bench serve`'s load generator.

    python -m raylight.benchmarks.serving_overhead [--model DIR] [--out FILE]

Targets (issue 3, CPU): at concurrency 64, HTTP output tok/s >= 90% of offline; at
concurrency 1, median HTTP TTFT <= median engine TTFT + 5 ms. Both engines run the model with
the same number of torch threads (the engine replica's, 1 by default), so that the comparison is
about the plumbing; the model must be big enough that a decode step costs >= 10 ms here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from raylight.benchmarks.serve_load import BenchConfig, run_benchmark
from raylight.benchmarks.serve_workload import SampledRequest, make_workload


@dataclass(frozen=True, slots=True)
class Workload:
    num_prompts: int
    input_len: int
    output_len: int
    vocab_size: int
    seed: int = 0

    def requests(self) -> list[SampledRequest]:
        return make_workload("random", self.num_prompts, self.input_len, self.output_len, 0.0,
                             self.vocab_size, as_text=False, seed=self.seed)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunResult:
    concurrency: int
    requests: int
    output_tokens: int
    duration_s: float
    output_tok_s: float
    ttft_median_ms: float
    ttft_mean_ms: float


def _result(concurrency: int, tokens: int, duration: float, ttfts: list[float]) -> RunResult:
    return RunResult(concurrency, len(ttfts), tokens, duration, tokens / duration,
                     1e3 * statistics.median(ttfts), 1e3 * statistics.fmean(ttfts))  # fmt: skip


async def _offline(engine: Any, workload: Workload, concurrency: int) -> RunResult:
    from raylight.engine.sampling_params import SamplingParams

    limit = asyncio.Semaphore(concurrency)
    ttfts: list[float] = []
    tokens = 0

    async def one(i: int, req: SampledRequest) -> None:
        nonlocal tokens
        params = SamplingParams(temperature=0.0, max_tokens=req.output_len, ignore_eos=True)
        async with limit:
            start = time.perf_counter()
            first = True
            async for delta in engine.generate(f"r{concurrency}-{i}", req.prompt, params):
                if first and delta.new_token_ids:
                    ttfts.append(time.perf_counter() - start)
                    first = False
                tokens += len(delta.new_token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(one(i, r) for i, r in enumerate(workload.requests())))
    return _result(concurrency, tokens, time.perf_counter() - start, ttfts)


def run_offline(model: str, options: dict, workload: Workload, runs: list[tuple[int, int]],
                threads: int) -> list[RunResult]:  # fmt: skip
    """`runs`: (concurrency, number of prompts) pairs, in order, on one engine."""
    from raylight.engine.async_engine import AsyncEngine
    from raylight.engine.llm import create_engine_core, engine_options

    torch.set_num_threads(threads)
    engine = AsyncEngine(create_engine_core(model, engine_options(options), progress=False))
    try:
        asyncio.run(_offline(engine, Workload(4, 16, 4, workload.vocab_size, seed=99), 4))  # warm
        return [
            asyncio.run(_offline(engine, _resized(workload, n), c)) for c, n in runs
        ]
    finally:
        engine.shutdown()


def _resized(workload: Workload, num_prompts: int) -> Workload:
    """The workload's first `num_prompts` requests, except that the concurrency-1 run (fewer
    prompts) draws new ones: prompts seen before would hit the prefix cache."""
    seed = workload.seed if num_prompts == workload.num_prompts else workload.seed + 1
    return Workload(num_prompts, workload.input_len, workload.output_len, workload.vocab_size,
                    seed)  # fmt: skip


def run_http(model: str, options: dict, workload: Workload, runs: list[tuple[int, int]]) -> (
    tuple[list[RunResult], int]
):  # fmt: skip
    """The same runs through a live app; also returns the engine replica's torch threads."""
    import ray
    from ray import serve

    from raylight.cluster.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": model, "served_model_name": "bench", **options}),
                  name="raylight", route_prefix="/")  # fmt: skip
        threads = _engine_threads()
        url = f"http://127.0.0.1:{port}"
        results = []
        for concurrency, n in [(4, 4), *runs]:  # the first is a warm-up
            config = BenchConfig(
                base_url=url, model="bench", num_prompts=n, input_len=workload.input_len,
                output_len=workload.output_len, vocab_size=workload.vocab_size,
                seed=_resized(workload, n).seed if n != 4 else 99, max_concurrency=concurrency,
                disable_tqdm=True,
            )  # fmt: skip
            m = asyncio.run(run_benchmark(config)).metrics
            if m.failed:
                raise RuntimeError(f"{m.failed} HTTP requests failed")
            results.append(RunResult(concurrency, m.completed, m.total_output_tokens, m.duration_s,
                                     m.output_throughput, m.ttft.median_ms, m.ttft.mean_ms))
        return results[1:], threads
    finally:
        serve.shutdown()
        ray.shutdown()


def _engine_threads() -> int:
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> int:  # what an actor with num_cpus=1 (the engine replica) gets
        import torch

        return torch.get_num_threads()

    return int(ray.get(threads.remote()))


def decode_step_ms(model: str, options: dict, batch: int, threads: int) -> float:
    """Time of one decode step of `batch` requests (the engine's, through `LLM`)."""
    from raylight.engine.llm import LLM
    from raylight.engine.sampling_params import SamplingParams

    torch.set_num_threads(threads)
    llm = LLM(model, progress=False, **options)
    prompts = [[5 + i, 7, 9, 11] for i in range(batch)]
    short, long = (SamplingParams(max_tokens=n, ignore_eos=True) for n in (2, 34))
    llm.generate(prompts, short)
    t0 = time.perf_counter()
    llm.generate(prompts, short)
    t1 = time.perf_counter()
    llm.generate(prompts, long)
    t2 = time.perf_counter()
    return 1e3 * ((t2 - t1) - (t1 - t0)) / 32


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model dir (default: make the `small` preset)")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--ttft-prompts", type=int, default=40, help="requests at concurrency 1")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    model = args.model or str(_small_model())
    options = {"dtype": "float32", "max_model_len": 1024}
    workload = Workload(args.num_prompts, args.input_len, args.output_len, vocab_size=16000)
    runs = [(args.concurrency, args.num_prompts), (1, args.ttft_prompts)]
    http, threads = run_http(model, options, workload, runs)
    offline = run_offline(model, options, workload, runs, threads)
    step_ms = decode_step_ms(model, options, args.concurrency, threads)
    report = _report(args, model, threads, step_ms, offline, http)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


def _small_model() -> Path:
    from raylight.engine.modelgen.default_model import default_cache_dir
    from raylight.engine.modelgen.make_model import make_model

    path = default_cache_dir() / "small-llama-seed0-float32-v1"
    if not (path / "config.json").is_file():
        make_model("llama", "small", path, seed=0, dtype="float32", progress=False)
    return path


def _report(args: argparse.Namespace, model: str, threads: int, step_ms: float,
            offline: list[RunResult], http: list[RunResult]) -> dict:  # fmt: skip
    (off_c, off_1), (http_c, http_1) = offline, http
    ratio = http_c.output_tok_s / off_c.output_tok_s
    extra_ttft = http_1.ttft_median_ms - off_1.ttft_median_ms
    return {
        "command": " ".join(["python -m raylight.benchmarks.serving_overhead", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "model": model,
        "engine_torch_threads": threads,
        "decode_step_ms_at_concurrency": step_ms,
        "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len, "ttft_prompts": args.ttft_prompts},
        "offline": [asdict(r) for r in offline],
        "http": [asdict(r) for r in http],
        "summary": {
            "http_over_offline_out_tok_s": ratio,
            "http_ttft_minus_engine_ttft_ms": extra_ttft,
            "targets_met": {"throughput_ge_0.9": ratio >= 0.9, "ttft_le_5ms": extra_ttft <= 5.0},
        },
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
