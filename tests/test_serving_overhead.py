"""The serving-overhead benchmark's offline half and report, on the tiny model (the HTTP half
is `raylight bench serve`, tested against a fake server and a live app elsewhere)."""

from __future__ import annotations

import argparse
from pathlib import Path

from raylight.benchmarks.serving_overhead import RunResult, Workload, _report, run_offline


def test_offline_runs_count_every_token(tiny_models: dict[str, Path]) -> None:
    workload = Workload(num_prompts=6, input_len=9, output_len=5, vocab_size=2000)
    options = {"dtype": "float32", "max_model_len": 64}
    busy, alone = run_offline(str(tiny_models["llama"]), options, workload, [(3, 6), (1, 2)], 1)
    assert (busy.concurrency, busy.requests, busy.output_tokens) == (3, 6, 30)
    assert (alone.concurrency, alone.requests, alone.output_tokens) == (1, 2, 10)
    assert busy.output_tok_s == busy.output_tokens / busy.duration_s
    assert 0 < alone.ttft_median_ms <= 1e3 * alone.duration_s


def test_report_ratios_and_targets() -> None:
    args = argparse.Namespace(num_prompts=6, input_len=9, output_len=5, ttft_prompts=2)
    offline = [RunResult(64, 6, 30, 1.0, 100.0, 50.0, 50.0), RunResult(1, 2, 10, 1.0, 10.0, 20.0,
                                                                        20.0)]  # fmt: skip
    http = [RunResult(64, 6, 30, 1.1, 91.0, 60.0, 60.0), RunResult(1, 2, 10, 1.0, 10.0, 26.0,
                                                                     26.0)]  # fmt: skip
    summary = _report(args, "m", 1, 12.0, offline, http)["summary"]
    assert summary["http_over_offline_out_tok_s"] == 0.91
    assert summary["http_ttft_minus_engine_ttft_ms"] == 6.0
    assert summary["targets_met"] == {"throughput_ge_0.9": True, "ttft_le_5ms": False}
