"""Prometheus metrics of one ingress replica (`GET /metrics`), named like vLLM's with a
`raylight_` prefix and the unit in the name.

Request counters and latency histograms are this replica's own; the engine gauges (running and
waiting requests, KV slots) are asked of every engine replica at scrape time,
so any ingress replica answers them for the whole application.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from raylight.cluster.messages import LoadReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)  # fmt: skip
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)  # fmt: skip


class ServingMetrics:
    """One registry per ingress replica (never the process-global one: two apps may share a
    process in tests)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model_name"]
        self.requests = Counter(
            "raylight_requests", "HTTP generation requests by endpoint and final status",
            m + ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "raylight_prompt_tokens", "Prompt tokens of finished requests", m, registry=r
        )
        self.cached_tokens = Counter(
            "raylight_prompt_tokens_cached", "Prompt tokens served from the prefix cache", m,
            registry=r,
        )  # fmt: skip
        self.generation_tokens = Counter(
            "raylight_generation_tokens", "Generated tokens sent to clients", m, registry=r
        )
        self.ttft = Histogram(
            "raylight_time_to_first_token_seconds", "Arrival to first output token", m,
            buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "raylight_inter_token_latency_seconds", "Gap between consecutive output tokens",
            m, buckets=_ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "raylight_e2e_request_latency_seconds", "Arrival to last byte of the response", m,
            buckets=_E2E_BUCKETS, registry=r,
        )  # fmt: skip
        e = m + ["engine"]
        self.running = Gauge("raylight_num_requests_running", "Requests in engine batches",
                             e, registry=r)  # fmt: skip
        self.waiting = Gauge("raylight_num_requests_waiting", "Requests queued in an engine",
                             e, registry=r)  # fmt: skip
        self.kv_used = Gauge("raylight_kv_cache_used_slots", "KV slots (tokens) in use", e,
                             registry=r)  # fmt: skip
        self.kv_total = Gauge("raylight_kv_cache_total_slots", "KV slots (tokens) in the pool",
                              e, registry=r)  # fmt: skip

    def observe_request(
        self,
        endpoint: str,
        status: str,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        ttft_s: float | None,
        gaps_s: Sequence[float],
        e2e_s: float,
    ) -> None:
        name = self.model_name
        self.requests.labels(name, endpoint, status).inc()
        self.prompt_tokens.labels(name).inc(prompt_tokens)
        self.cached_tokens.labels(name).inc(cached_tokens)
        self.generation_tokens.labels(name).inc(completion_tokens)
        if ttft_s is not None:
            self.ttft.labels(name).observe(ttft_s)
        itl = self.itl.labels(name)
        for gap in gaps_s:
            itl.observe(gap)
        self.e2e.labels(name).observe(e2e_s)

    def render(self, loads: Sequence[LoadReport]) -> bytes:
        """The text exposition, with the engine gauges set from `loads` first."""
        for load in loads:
            labels = (self.model_name, str(load.engine_index))
            self.running.labels(*labels).set(load.num_running)
            self.waiting.labels(*labels).set(load.num_waiting)
            self.kv_used.labels(*labels).set(load.kv_slots_used)
            self.kv_total.labels(*labels).set(load.kv_slots_total)
        return generate_latest(self.registry)
