"""`raylight bench serve` against an in-process fake OpenAI server with known chunk timings."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from raylight.benchmarks.serve_load import BenchConfig, BenchResult, run_benchmark
from raylight.benchmarks.serve_metrics import RequestOutcome, latency_stats, summarize
from raylight.benchmarks.serve_workload import (
    DATASETS,
    SHAREGPT_CLIP,
    arrival_times,
    make_workload,
    sample_lengths,
)
from raylight.cluster import cli_bench

TTFT_S = 0.06  # the fake server's delay before the first content chunk
ITL_S = 0.02  # and between content chunks
OUT_LEN = 5


def fake_openai_app() -> FastAPI:
    """One content chunk per requested token, after an empty chunk sent at once.

    The model name picks a behaviour: "flaky-*" answers 400 to every third request,
    "no-usage-*" omits the usage chunk. `app.state` records requests and peak concurrency.
    """
    app = FastAPI()
    app.state.seen = defaultdict(list)  # model -> request bodies
    app.state.active = defaultdict(int)
    app.state.peak = defaultdict(int)

    def chunk(chat: bool, text: str) -> str:
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        return f"data: {json.dumps({'choices': [choice]})}\n\n"

    async def stream(body: dict, chat: bool) -> AsyncIterator[str]:
        model = body["model"]
        app.state.active[model] += 1
        app.state.peak[model] = max(app.state.peak[model], app.state.active[model])
        try:
            n = body["max_completion_tokens" if chat else "max_tokens"]
            yield chunk(chat, "")  # as the role chunk: must not count as the first token
            for i in range(n):
                await asyncio.sleep(TTFT_S if i == 0 else ITL_S)
                yield chunk(chat, f" t{i}")
            if not model.startswith("no-usage"):
                prompt = body["messages"][0]["content"].split() if chat else body["prompt"]
                usage = {"prompt_tokens": len(prompt), "completion_tokens": n}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            app.state.active[model] -= 1

    async def handle(request: Request, chat: bool):
        body = await request.json()
        seen = app.state.seen[body["model"]]
        seen.append(body)
        if body["model"].startswith("flaky") and len(seen) % 3 == 0:
            return JSONResponse({"error": {"message": "bad request", "code": 400}}, 400)
        return StreamingResponse(stream(body, chat), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "fake-model"}]}

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    app = fake_openai_app()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, chosen now
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started, "fake server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


def bench(base_url: str, **kw) -> BenchResult:
    kw = {"num_prompts": 16, "input_len": 32, "output_len": OUT_LEN, "disable_tqdm": True, **kw}
    return asyncio.run(run_benchmark(BenchConfig(base_url=base_url, **kw)))


def assert_timings_match_server(result: BenchResult) -> None:
    m = result.metrics
    assert TTFT_S * 1e3 - 5 < m.ttft.median_ms < TTFT_S * 1e3 + 50
    assert ITL_S * 1e3 - 5 < m.itl.median_ms < ITL_S * 1e3 + 25
    assert ITL_S * 1e3 - 5 < m.tpot.median_ms < ITL_S * 1e3 + 25
    assert m.itl.count == m.completed * (OUT_LEN - 1)
    expected_e2e = (TTFT_S + (OUT_LEN - 1) * ITL_S) * 1e3
    assert expected_e2e - 5 < m.e2el.median_ms < expected_e2e + 80
    assert m.ttft.percentiles_ms[99] >= m.ttft.median_ms


def test_fixed_concurrency(server: tuple[str, FastAPI]) -> None:
    url, app = server
    result = bench(url, model="conc", max_concurrency=4)
    m = result.metrics
    assert (m.completed, m.failed) == (16, 0)
    assert (m.total_input_tokens, m.total_output_tokens) == (16 * 32, 16 * OUT_LEN)
    assert app.state.peak["conc"] == 4
    assert_timings_match_server(result)
    # Four waves of four requests, each taking TTFT + 4 ITL.
    assert m.duration_s > 4 * (TTFT_S + (OUT_LEN - 1) * ITL_S)
    assert m.output_throughput == pytest.approx(m.total_output_tokens / m.duration_s)
    body = app.state.seen["conc"][0]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] and len(body["prompt"]) == 32
    assert all(0 <= t < 1000 for b in app.state.seen["conc"] for t in b["prompt"])


def test_poisson_rate_and_all_at_once(server: tuple[str, FastAPI]) -> None:
    url, app = server
    result = bench(url, model="poisson", num_prompts=20, request_rate=25.0)
    assert (result.metrics.completed, result.metrics.failed) == (20, 0)
    assert_timings_match_server(result)
    assert app.state.peak["poisson"] < 20  # spread out in time, not all at once
    bench(url, model="burst", num_prompts=20)
    assert app.state.peak["burst"] == 20


def test_chat_endpoint_and_server_model(server: tuple[str, FastAPI]) -> None:
    url, app = server
    result = bench(url, endpoint="/v1/chat/completions", num_prompts=6, input_len=10)
    assert result.model == "fake-model"
    assert result.metrics.completed == 6
    assert result.metrics.total_input_tokens == 6 * 10  # the server counts words
    assert_timings_match_server(result)
    body = app.state.seen["fake-model"][0]
    assert len(body["messages"][0]["content"].split()) == 10
    assert body["max_completion_tokens"] == OUT_LEN


def test_failures_are_counted(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    result = bench(url, model="flaky", num_prompts=12, max_concurrency=3)
    assert (result.metrics.completed, result.metrics.failed) == (8, 4)
    failed = [o for o in result.outcomes if not o.success]
    assert all(o.error.startswith("HTTP 400") and "bad request" in o.error for o in failed)
    assert result.metrics.total_output_tokens == 8 * OUT_LEN


def test_output_tokens_without_usage(server: tuple[str, FastAPI]) -> None:
    url, _ = server
    result = bench(url, model="no-usage", num_prompts=4, output_len=3)
    assert [o.output_tokens for o in result.outcomes] == [3] * 4


def test_unreachable_server_fails_every_request() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    result = bench(f"http://127.0.0.1:{port}", model="m", num_prompts=3)
    assert (result.metrics.completed, result.metrics.failed) == (0, 3)
    assert all(o.error for o in result.outcomes)


def test_cli_parses_runs_and_writes_json(
    server: tuple[str, FastAPI], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser(prog="raylight")
    cli_bench.add_bench(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench", "serve", "--help"])
    assert exc.value.code == 0 and "--max-concurrency" in capsys.readouterr().out
    out = tmp_path / "r.json"
    args = parser.parse_args([
        "bench", "serve", "--base-url", server[0], "--model", "cli", "--api-key", "secret",
        "--num-prompts", "5", "--random-input-len", "8", "--output-len", str(OUT_LEN),
        "--request-rate", "50", "--metric-percentiles", "50,90,99.9", "--disable-tqdm",
        "--result-json", str(out), "--save-detailed",
    ])  # fmt: skip
    assert args.input_len == 8 and args.metric_percentiles == (50.0, 90.0, 99.9)
    assert cli_bench.DATASETS == DATASETS
    assert args.handler(args) == 0
    assert "Successful requests:" in capsys.readouterr().out
    report = json.loads(out.read_text())
    for key in ("timestamp", "command", "model", "config", "duration", "completed", "failed",
                "request_throughput", "output_throughput", "total_token_throughput",
                "mean_ttft_ms", "median_tpot_ms", "p99.9_itl_ms", "p90_e2el_ms", "std_itl_ms"):
        assert key in report, key  # fmt: skip
    assert report["completed"] == 5 and report["config"]["request_rate"] == 50.0
    assert report["config"]["api_key"] == "***" and "secret" not in out.read_text()
    assert len(report["requests"]) == 5 and len(report["requests"][0]["itl_ms"]) == OUT_LEN - 1


def test_latency_stats_and_summary() -> None:
    stats = latency_stats([0.001 * i for i in range(1, 101)], (90, 99))
    assert stats.count == 100 and stats.mean_ms == pytest.approx(50.5)
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.percentiles_ms[90] == pytest.approx(90.1)
    assert stats.percentiles_ms[99] == pytest.approx(99.01)
    assert latency_stats([], (99,)).percentiles_ms == {99: 0.0}
    ok = RequestOutcome(True, 10, 5, ttft_s=0.1, e2e_s=0.5, itl_s=(0.1,) * 4)
    one = RequestOutcome(True, 7, 1, ttft_s=0.2, e2e_s=0.2)
    bad = RequestOutcome(False, 99, error="x")
    m = summarize([ok, one, bad], duration_s=2.0, percentiles=(99,))
    assert (m.completed, m.failed, m.total_input_tokens, m.total_output_tokens) == (2, 1, 17, 6)
    assert m.request_throughput == 1.0 and m.total_token_throughput == 11.5
    assert m.tpot.count == 1 and m.tpot.mean_ms == pytest.approx(100.0)
    assert m.ttft.mean_ms == pytest.approx(150.0) and m.itl.count == 4


def test_arrival_times() -> None:
    rng = np.random.default_rng(0)
    gaps = np.diff(arrival_times(20_000, 8.0, 1.0, rng))
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 8.0, rel=0.05)  # exponential: std == mean
    even = np.diff(arrival_times(20_000, 8.0, 4.0, rng))
    assert even.mean() == pytest.approx(1 / 8.0, rel=0.03) and even.std() < 0.6 / 8.0
    assert arrival_times(5, math.inf, 1.0, rng).tolist() == [0.0] * 5
    assert arrival_times(3, 1.0, 1.0, rng)[0] == 0.0


def test_dataset_lengths() -> None:
    rng = np.random.default_rng(0)
    ins, outs = sample_lengths("random", 5000, 100, 40, 0.25, rng)
    assert ins.min() == 75 and ins.max() == 125 and outs.min() == 30 and outs.max() == 50
    ins, outs = sample_lengths("random", 10, 100, 40, 0.0, rng)
    assert set(ins) == {100} and set(outs) == {40}
    ins, outs = sample_lengths("sharegpt-synthetic", 20_000, 0, 0, 0.0, rng)
    assert np.median(ins) == pytest.approx(250, rel=0.05)
    assert np.median(outs) == pytest.approx(200, rel=0.05)
    low, high = SHAREGPT_CLIP
    assert ins.min() >= low and outs.min() >= low and ins.max() == outs.max() == high
    a = make_workload("random", 4, 16, 8, 0.5, 50, as_text=False, seed=3)
    assert a == make_workload("random", 4, 16, 8, 0.5, 50, as_text=False, seed=3)
    assert all(len(r.prompt) == r.prompt_len and max(r.prompt) < 50 for r in a)
    text = make_workload("sharegpt-synthetic", 3, 0, 0, 0.0, 50, as_text=True, seed=3)
    assert all(len(r.prompt.split()) == r.prompt_len for r in text)
