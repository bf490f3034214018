"""Per-request outcomes of a serving benchmark and the statistics over them.

Definitions (as in vLLM's `bench serve`):
- TTFT: from sending the request to the first chunk with non-empty content.
- ITL: the gap between two successive content chunks (a chunk may carry several tokens).
- TPOT: (E2E - TTFT) / (output tokens - 1), per request with at least two output tokens.
- E2E: from sending the request to the end of its stream.
Token totals and latencies count successful requests only; throughputs divide by the wall time
of the whole run. Percentiles interpolate linearly (numpy's default); a metric with no samples
reports zeros and `count` 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What one request did. Times are in seconds; `error` is empty on success."""

    success: bool
    prompt_len: int
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: tuple[float, ...] = ()
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        if not self.success or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Summary of one latency metric in milliseconds; `percentiles_ms` maps p (0-100) to value."""

    count: int
    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BenchMetrics:
    duration_s: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (input + output tokens) / s
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats


def latency_stats(samples_s: Sequence[float], percentiles: Sequence[float]) -> LatencyStats:
    """Mean, median, standard deviation and `percentiles` of `samples_s`, in milliseconds."""
    if len(samples_s) == 0:
        return LatencyStats(0, 0.0, 0.0, 0.0, {p: 0.0 for p in percentiles})
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return LatencyStats(
        count=int(ms.size),
        mean_ms=float(ms.mean()),
        median_ms=float(np.median(ms)),
        std_ms=float(ms.std()),
        percentiles_ms={p: float(np.percentile(ms, p)) for p in percentiles},
    )


def summarize(
    outcomes: Sequence[RequestOutcome], duration_s: float, percentiles: Sequence[float]
) -> BenchMetrics:
    """The benchmark's metrics from its outcomes and its wall time."""
    ok = [o for o in outcomes if o.success]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(o.output_tokens for o in ok)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    tpots = [t for t in (o.tpot_s for o in ok) if t is not None]
    return BenchMetrics(
        duration_s=duration_s,
        completed=len(ok),
        failed=len(outcomes) - len(ok),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) * per_s,
        output_throughput=total_out * per_s,
        total_token_throughput=(total_in + total_out) * per_s,
        ttft=latency_stats([o.ttft_s for o in ok], percentiles),
        tpot=latency_stats(tpots, percentiles),
        itl=latency_stats([t for o in ok for t in o.itl_s], percentiles),
        e2el=latency_stats([o.e2e_s for o in ok], percentiles),
    )
