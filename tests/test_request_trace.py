"""RequestTrace: what one request did, recorded once into the metrics and one log line."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raylight.cluster.generation import SampleEvent
from raylight.cluster.metrics import ServingMetrics
from raylight.cluster.request_trace import RequestTrace


def event(index: int, tokens: list[int], used: int, cached: int | None = None) -> SampleEvent:
    return SampleEvent(index, "t" * len(tokens), tokens, None, None, used, cached)


def test_trace_times_tokens_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    trace = RequestTrace("cmpl-1", "completions", start=100.0, prompt_tokens=5)
    trace.on_event(0, event(0, [], 0), 100.05)  # no tokens: not a first token
    trace.on_event(0, event(0, [7], 1, cached=3), 100.1)
    trace.on_event(0, event(1, [8, 9], 2, cached=4), 100.2)  # another sample: its first tokens
    trace.on_event(0, event(0, [3, 4, 5], 4), 100.4)  # 3 tokens share a 0.3 s gap
    assert trace.first_token_at == 100.1
    assert trace.gaps_s == pytest.approx([0.0, 0.1, 0.1, 0.1])
    assert trace.completion_tokens == 6
    assert trace.cached_tokens == 4  # the samples share one prompt: its largest hit
    metrics = ServingMetrics("m")
    log = logging.getLogger("test.trace")
    with caplog.at_level(logging.INFO, logger="test.trace"):
        trace.finish("200", metrics, log)
        trace.finish("499", metrics, log)  # recorded once only
    (record,) = caplog.records
    line = json.loads(record.getMessage())
    assert line["request_id"] == "cmpl-1" and line["status"] == "200"
    assert line["prompt_tokens"] == 5 and line["completion_tokens"] == 6
    assert line["cached_tokens"] == 4
    assert line["ttft_s"] == pytest.approx(0.1)
    assert set(line) == {"event", "request_id", "endpoint", "status", "prompt_tokens",
                         "cached_tokens", "completion_tokens", "ttft_s",
                         "total_s"}  # no prompt text  # fmt: skip
    samples = {
        (s.name, s.labels.get("status")): s.value
        for f in text_string_to_metric_families(metrics.render([]).decode())
        for s in f.samples
    }
    assert samples[("raylight_requests_total", "200")] == 1
    assert ("raylight_requests_total", "499") not in samples
    assert samples[("raylight_generation_tokens_total", None)] == 6
    assert samples[("raylight_prompt_tokens_cached_total", None)] == 4
    assert samples[("raylight_inter_token_latency_seconds_count", None)] == 4
