"""How a serving benchmark's result is shown: a table, a JSON file, and (with matplotlib) a PNG.

The JSON keeps vLLM's `bench serve` key names for the metrics (`request_throughput`,
`mean_ttft_ms`, `p99_itl_ms`, ...) so its results and ours can be compared by the same scripts:

    benchmark: "serve", timestamp (ISO 8601 UTC, start of the run), command (the exact command
    line, API key hidden), model, config (every BenchConfig field; api_key hidden, an infinite
    request_rate as "inf"), duration (s), completed, failed, total_input_tokens,
    total_output_tokens, request_throughput (req/s), output_throughput (tok/s),
    total_token_throughput (tok/s), then for each of ttft, tpot, itl, e2el:
    mean_<m>_ms, median_<m>_ms, std_<m>_ms and p<P>_<m>_ms for each configured percentile P,
    errors (the error text of each failed request), and with `detailed` requests: per request
    {success, prompt_len, output_tokens, ttft_ms, tpot_ms, e2el_ms, itl_ms: [...], error}.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from raylight.benchmarks.serve_load import BenchResult
from raylight.benchmarks.serve_metrics import LatencyStats, RequestOutcome

_METRICS = (
    ("ttft", "Time to First Token", "TTFT"),
    ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
    ("itl", "Inter-token Latency", "ITL"),
    ("e2el", "End-to-end Latency", "E2EL"),
)
_HIDDEN = "***"


def percentile_label(p: float) -> str:
    return f"p{p:g}"


def hide_api_key(argv: list[str]) -> list[str]:
    """`argv` with the value of --api-key replaced, so result files can be shared."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--api-key":
            out.append(_HIDDEN)
        elif arg.startswith("--api-key="):
            out.append("--api-key=" + _HIDDEN)
        else:
            out.append(arg)
    return out


def _stats(result: BenchResult) -> dict[str, LatencyStats]:
    m = result.metrics
    return {"ttft": m.ttft, "tpot": m.tpot, "itl": m.itl, "e2el": m.e2el}


def format_table(result: BenchResult) -> str:
    m, cfg = result.metrics, result.config
    rows: list[tuple[str, Any]] = [
        ("Model", result.model),
        ("Successful requests", m.completed),
        ("Failed requests", m.failed),
        ("Request rate configured (RPS)", cfg.request_rate),
        ("Maximum request concurrency", cfg.max_concurrency),
        ("Benchmark duration (s)", f"{m.duration_s:.2f}"),
        ("Total input tokens", m.total_input_tokens),
        ("Total generated tokens", m.total_output_tokens),
        ("Request throughput (req/s)", f"{m.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{m.output_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{m.total_token_throughput:.2f}"),
    ]
    lines = ["{s:{c}^60}".format(s=" Serving Benchmark Result ", c="=")]
    lines += [f"{k + ':':<45}{v!s:>15}" for k, v in rows]
    all_stats = _stats(result)
    for name, title, short in _METRICS:
        stats = all_stats[name]
        lines.append("{s:{c}^60}".format(s=f" {title} ", c="-"))
        lines.append(f"{f'Mean {short} (ms):':<45}{stats.mean_ms:>15.2f}")
        lines.append(f"{f'Median {short} (ms):':<45}{stats.median_ms:>15.2f}")
        for p, v in stats.percentiles_ms.items():
            lines.append(f"{f'{percentile_label(p).upper()} {short} (ms):':<45}{v:>15.2f}")
    lines.append("=" * 60)
    errors = sorted({o.error for o in result.outcomes if not o.success})
    lines += [f"error: {e}" for e in errors[:5]]
    return "\n".join(lines)


def _request_json(o: RequestOutcome) -> dict[str, Any]:
    tpot = o.tpot_s
    return {
        "success": o.success, "prompt_len": o.prompt_len, "output_tokens": o.output_tokens,
        "ttft_ms": o.ttft_s * 1e3, "tpot_ms": None if tpot is None else tpot * 1e3,
        "e2el_ms": o.e2e_s * 1e3, "itl_ms": [t * 1e3 for t in o.itl_s], "error": o.error,
    }  # fmt: skip


def result_to_json(result: BenchResult, command: str, detailed: bool = False) -> dict[str, Any]:
    """The JSON-ready dict described in the module docstring."""
    m = result.metrics
    config = dataclasses.asdict(result.config)
    if config["api_key"]:
        config["api_key"] = _HIDDEN
    if math.isinf(config["request_rate"]):
        config["request_rate"] = "inf"  # JSON has no infinity
    report: dict[str, Any] = {
        "benchmark": "serve", "timestamp": result.started_at, "command": command,
        "model": result.model, "config": config, "duration": m.duration_s,
        "completed": m.completed, "failed": m.failed,
        "total_input_tokens": m.total_input_tokens, "total_output_tokens": m.total_output_tokens,
        "request_throughput": m.request_throughput, "output_throughput": m.output_throughput,
        "total_token_throughput": m.total_token_throughput,
    }  # fmt: skip
    for name, stats in _stats(result).items():
        report[f"mean_{name}_ms"] = stats.mean_ms
        report[f"median_{name}_ms"] = stats.median_ms
        report[f"std_{name}_ms"] = stats.std_ms
        for p, v in stats.percentiles_ms.items():
            report[f"{percentile_label(p)}_{name}_ms"] = v
    report["errors"] = [o.error for o in result.outcomes if not o.success]
    if detailed:
        report["requests"] = [_request_json(o) for o in result.outcomes]
    return report


def plot_latencies(result: BenchResult, path: Path) -> bool:
    """Draw the CDF of TTFT, TPOT, ITL and E2E latency to `path`; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [o for o in result.outcomes if o.success]
    samples = {
        "TTFT": [o.ttft_s for o in ok],
        "TPOT": [t for t in (o.tpot_s for o in ok) if t is not None],
        "ITL": [t for o in ok for t in o.itl_s],
        "E2E latency": [o.e2e_s for o in ok],
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (title, values) in zip(axes.flat, samples.items()):
        ms = sorted(v * 1e3 for v in values)
        ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], drawstyle="steps-post")
        ax.set(title=title, xlabel="ms", ylabel="fraction of samples")
        ax.grid(alpha=0.3)
    cfg = result.config
    fig.suptitle(
        f"{result.model}: {cfg.dataset}, {cfg.num_prompts} prompts, rate {cfg.request_rate}/s, "
        f"max concurrency {cfg.max_concurrency or 'unlimited'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_result(
    result: BenchResult, path: Path, command: str, detailed: bool = False
) -> list[Path]:
    """Write the JSON to `path` and, with matplotlib, its plot next to it; the paths written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result_to_json(result, command, detailed), indent=2) + "\n")
    png = path.with_suffix(".png")
    return [path, png] if plot_latencies(result, png) else [path]
