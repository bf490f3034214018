"""`run_benchmark`: drive an OpenAI-compatible server with a synthetic workload and measure it.

Requests are created at their arrival times (`serve_workload.arrival_times`); with
`max_concurrency` they then wait for a semaphore, so at most that many are in flight and the
clock of each (TTFT, E2E) starts when it is actually sent. The run's duration is from the first
arrival to the last stream's end.

    result = asyncio.run(run_benchmark(BenchConfig(base_url="http://127.0.0.1:8000",
                                                   num_prompts=200, max_concurrency=16)))
    print(format_table(result))  # raylight.benchmarks.serve_report
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
import numpy as np
from tqdm import tqdm

from raylight.benchmarks.serve_client import ApiTarget, send_request
from raylight.benchmarks.serve_metrics import BenchMetrics, RequestOutcome, summarize
from raylight.benchmarks.serve_workload import (
    DATASETS,
    SampledRequest,
    arrival_times,
    make_workload,
)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """A serving benchmark: target, workload, load shape. Flags of `raylight bench serve`."""

    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = "/v1/completions"  # or /v1/chat/completions
    model: str | None = None  # None: the first model of GET {base_url}/v1/models
    api_key: str | None = None
    dataset: str = "random"  # one of serve_workload.DATASETS
    num_prompts: int = 1000
    input_len: int = 1024  # random dataset only
    output_len: int = 128  # random dataset only
    range_ratio: float = 0.0  # random lengths are uniform in len * [1 - ratio, 1 + ratio]
    vocab_size: int = 1000  # random token ids are in [0, vocab_size)
    seed: int = 0
    request_rate: float = math.inf  # requests / s; inf sends all at once
    burstiness: float = 1.0  # 1: Poisson arrivals
    max_concurrency: int | None = None
    temperature: float = 0.0
    ignore_eos: bool = True  # so output lengths are what the workload says
    request_timeout_s: float = 6 * 3600.0
    percentiles: tuple[float, ...] = (90.0, 99.0)  # reported besides mean and median
    disable_tqdm: bool = False

    def __post_init__(self) -> None:
        if not self.endpoint.rstrip("/").endswith("completions"):
            raise ValueError(f"endpoint {self.endpoint!r} is not an OpenAI completions endpoint")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {DATASETS}")
        if min(self.num_prompts, self.input_len, self.output_len, self.vocab_size) < 1:
            raise ValueError("num_prompts, input_len, output_len and vocab_size must be >= 1")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")
        if not (self.request_rate > 0 and self.burstiness > 0):
            raise ValueError("request_rate and burstiness must be positive")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if not all(0.0 <= p <= 100.0 for p in self.percentiles):
            raise ValueError(f"percentiles must be in [0, 100], got {self.percentiles}")

    @property
    def chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.endpoint.lstrip("/")


@dataclass(frozen=True, slots=True)
class BenchResult:
    config: BenchConfig
    model: str  # the model the requests named (config.model or the server's first)
    started_at: str  # ISO 8601, UTC
    metrics: BenchMetrics
    outcomes: tuple[RequestOutcome, ...]  # in workload order


async def first_model(session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> str:
    """The id of the first model the server lists at /v1/models."""
    url = base_url.rstrip("/") + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with session.get(url, headers=headers) as r:
            r.raise_for_status()
            return str((await r.json())["data"][0]["id"])
    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError) as exc:
        raise RuntimeError(f"no --model given and {url} lists none: {exc!r}") from exc


async def _drive(
    session: aiohttp.ClientSession, target: ApiTarget, workload: Sequence[SampledRequest],
    send_times: np.ndarray, max_concurrency: int | None, disable_tqdm: bool,
) -> tuple[list[RequestOutcome], float]:  # fmt: skip
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    bar = tqdm(total=len(workload), desc="requests", unit="req", disable=disable_tqdm)

    async def one(req: SampledRequest) -> RequestOutcome:
        async with limit:
            outcome = await send_request(session, target, req)
        bar.update(1)
        return outcome

    tasks: list[asyncio.Task[RequestOutcome]] = []
    start = time.perf_counter()
    for req, at in zip(workload, send_times):
        delay = start + float(at) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(req)))
    outcomes = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    bar.close()
    return list(outcomes), duration


async def run_benchmark(config: BenchConfig) -> BenchResult:
    """Run the benchmark `config` describes; failed requests are counted, never raised."""
    workload = make_workload(
        config.dataset, config.num_prompts, config.input_len, config.output_len,
        config.range_ratio, config.vocab_size, as_text=config.chat, seed=config.seed,
    )  # fmt: skip
    # A separate stream, so the arrivals do not change when the workload's draws do.
    rng = np.random.default_rng([config.seed, 1])
    send_times = arrival_times(len(workload), config.request_rate, config.burstiness, rng)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    # aiohttp's default pool holds 100 connections; the load must not be capped silently.
    connector = aiohttp.TCPConnector(limit=config.max_concurrency or 0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        model = config.model or await first_model(session, config.base_url, config.api_key)
        target = ApiTarget(
            config.url, config.chat, model, config.api_key, config.ignore_eos, config.temperature
        )
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        outcomes, duration = await _drive(
            session, target, workload, send_times, config.max_concurrency, config.disable_tqdm
        )
    metrics = summarize(outcomes, duration, config.percentiles)
    return BenchResult(config, model, started_at, metrics, tuple(outcomes))
