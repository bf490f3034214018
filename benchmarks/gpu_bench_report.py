"""gpu_bench's summary (the figures people compare, each with its fraction of a ceiling), the
closing table and the PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylight.benchmarks.gpu_bench_floors import layer_linear_params, lm_head_params
from raylight.engine.model_config import ModelArchConfig

SUMMARY_KEYS = (
    "device", "tpot_b1_ms", "tpot_floor_ms", "ttft_1024_ms", "ttft_floor_ms",
    "offline_out_tok_s", "decode_attn_bw_frac", "prefill_attn_flops_frac", "hf_cb_out_tok_s",
    "raylight_on_hf_workload_out_tok_s",
)  # fmt: skip


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _pick(rows: list[dict], match: dict[str, int]) -> dict | None:
    """The row matching `match` exactly, else the last row (the caller reports which)."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return rows[-1] if rows else None


def _model_dtype_decode(kern: dict[str, Any], kernel: str = "split") -> list[dict]:
    """The decode rows of `kernel` timed on the pool of the shapes' dtype (not the extra
    FP8-pool row)."""
    pool_dtype = (kern.get("shapes") or {}).get("dtype", "bfloat16")
    return [r for r in kern.get("decode") or []
            if r.get("kv_dtype", pool_dtype) == pool_dtype
            and r.get("kernel", "split") == kernel]  # fmt: skip


def _resolved_backend(report: dict[str, Any]) -> str | None:
    """The backend the engine resolved at its last load, else the option as given."""
    loads = report.get("engine_loads") or []
    return (loads[-1].get("attention_backend") if loads else None) or report.get(
        "attention_backend"
    )


def gemm_frac(
    run: dict[str, Any] | None, arch: ModelArchConfig, gemm: float | None
) -> float | None:
    """Linear-layer FLOP/s of a throughput run over the GEMM ceiling: 2 FLOPs per layer weight
    per processed token, plus the lm_head once per output token (attention left out)."""
    if not run or not gemm or not run.get("elapsed_s"):
        return None
    flops = 2 * arch.num_layers * layer_linear_params(arch) * (
        run["prompt_tokens"] + run["output_tokens"]
    ) + 2 * lm_head_params(arch) * run["output_tokens"]
    return flops / run["elapsed_s"] / gemm


def _throughput(prefix: str, run: dict | None, arch: ModelArchConfig | None,
                gemm: float | None) -> dict[str, Any]:  # fmt: skip
    run = run or {}
    return {f"{prefix}_out_tok_s": run.get("out_tok_s"),
            f"{prefix}_total_tok_s": run.get("total_tok_s"),
            f"{prefix}_requests_submitted": run.get("submitted"),
            f"{prefix}_requests_completed": run.get("completed"),
            f"{prefix}_truncated_at_deadline": run.get("truncated"),
            f"{prefix}_gemm_frac": gemm_frac(run, arch, gemm) if arch else None}  # fmt: skip


def build_summary(report: dict[str, Any], arch: ModelArchConfig | None) -> dict[str, Any]:
    res = report["results"]
    ceil = res.get("ceilings") or {}
    copy_bw = (ceil.get("copy") or {}).get("bytes_per_s")
    gemm = (ceil.get("gemm") or {}).get("flops_per_s")
    lat = res.get("latency") or {}
    kern = res.get("kernels") or {}
    dec = _pick(_model_dtype_decode(kern), {"batch": 64, "kv_len": 4096})
    rope = _pick(_model_dtype_decode(kern, "rope"), {"batch": 64, "kv_len": 4096})
    fp8 = next((r for r in kern.get("decode") or [] if r.get("kv_dtype") == "float8_e4m3fn"), None)
    pre = _pick(kern.get("prefill") or [], {"q_len": 16384})
    hf = res.get("hf") or {}
    hf_out = (hf.get("hf") or {}).get("out_tok_s")
    rl_out = (hf.get("raylight") or {}).get("out_tok_s")
    hf_frac = gemm_frac(hf.get("raylight"), arch, gemm) if arch else None
    s: dict[str, Any] = {
        "device": report["device"],
        "attention_backend": _resolved_backend(report),
        "copy_bw_tb_s": copy_bw / 1e12 if copy_bw else None,
        "gemm_tflop_s": gemm / 1e12 if gemm else None,
        "tpot_b1_ms": lat.get("tpot_ms"), "tpot_floor_ms": lat.get("tpot_floor_ms"),
        "tpot_floor_frac": _ratio(lat.get("tpot_floor_ms"), lat.get("tpot_ms")),
        "ttft_1024_ms": lat.get("ttft_ms"), "ttft_floor_ms": lat.get("ttft_floor_ms"),
        "ttft_floor_frac": _ratio(lat.get("ttft_floor_ms"), lat.get("ttft_ms")),
        "latency_prompt_len": lat.get("prompt_len"), "latency_output_len": lat.get("output_len"),
        **_throughput("offline", res.get("offline"), arch, gemm),
        **_throughput("sharegpt", res.get("sharegpt"), arch, gemm),
        "decode_attn_bw_frac": dec and dec.get("bw_frac"),
        "decode_attn_case": dec and f"b{dec['batch']} ctx{dec['kv_len']}",
        # The same case from an FP8 pool: its time over the model-dtype pool's (0.5 = ideal).
        "decode_attn_fp8_time_ratio": fp8 and dec and _ratio(fp8["median_ms"], dec["median_ms"]),
        "decode_attn_fp8_bw_frac": fp8 and fp8.get("bw_frac"),
        # The same case through the engine's decode-step kernel (kernels/
        # decode_rope_attention.py: rotary, KV store, attention and merge in one launch).
        "decode_rope_attn_bw_frac": rope and rope.get("bw_frac"),
        "prefill_attn_flops_frac": pre and pre.get("flops_frac"),
        "prefill_attn_case": pre and f"q_len {pre['q_len']}",
        "hf_cb_out_tok_s": hf_out, "raylight_on_hf_workload_out_tok_s": rl_out,
        "raylight_over_hf_cb": _ratio(rl_out, hf_out),
        # The workload is prefill-heavy: how much of the GEMM ceiling raylight's linear layers
        # ran at, and how much 20x HF's rate would need (above ~0.9 no engine gets there).
        "raylight_on_hf_workload_gemm_frac": hf_frac,
        "hf_20x_needs_gemm_frac": hf_frac and hf_out and rl_out and hf_frac * 20 * hf_out / rl_out,
        "hf_workload_requests": hf.get("requests"),
        "sections_failed": sorted(report["errors"]), "sections_skipped": report["skipped"],
    }  # fmt: skip
    return s


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def print_table(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    print("\n" + "-" * (width + 24), flush=True)
    for k, v in summary.items():
        print(f"{k:<{width}}  {_fmt(v)}")
    print("-" * (width + 24), flush=True)


def write_plot(report: dict[str, Any], path: Path) -> str:
    """Decode-attention bandwidth fraction per batch x context, prefill-attention FLOP
    fraction per length, end-to-end fractions of their floors. Returns what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"skipped: matplotlib unavailable ({e})"
    kern = report["results"].get("kernels") or {}
    s = report["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    decode = _model_dtype_decode(kern)
    batches = sorted({r["batch"] for r in decode})
    ctxs = sorted({r["kv_len"] for r in decode})
    width = 0.8 / max(1, len(batches))
    for i, b in enumerate(batches):
        rows = {r["kv_len"]: r.get("bw_frac") or 0.0 for r in decode if r["batch"] == b}
        xs = [j + i * width for j in range(len(ctxs))]
        bars = axes[0].bar(xs, [rows.get(c, 0.0) for c in ctxs], width, label=f"batch {b}")
        axes[0].bar_label(bars, fmt="%.2f", fontsize=7)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(ctxs))], [str(c) for c in ctxs])
    axes[0].set(title="decode attention: bytes/s / copy bandwidth", xlabel="context",
                ylim=(0, 1.05))  # fmt: skip
    axes[0].legend()
    prefill = kern.get("prefill") or []
    bars = axes[1].bar([str(r["q_len"]) for r in prefill],
                       [r.get("flops_frac") or 0 for r in prefill])  # fmt: skip
    axes[1].bar_label(bars, fmt="%.2f")
    axes[1].set(title="prefill attention (causal): FLOP/s / GEMM rate", xlabel="tokens",
                ylim=(0, 1.05))  # fmt: skip
    e2e = {"TPOT b1\nfloor/meas": s.get("tpot_floor_frac"),
           "TTFT\nfloor/meas": s.get("ttft_floor_frac"),
           "offline\nGEMM frac": s.get("offline_gemm_frac"),
           "sharegpt\nGEMM frac": s.get("sharegpt_gemm_frac")}  # fmt: skip
    axes[2].bar_label(axes[2].bar(list(e2e), [v or 0.0 for v in e2e.values()]), fmt="%.2f")
    axes[2].set(title="end to end: fraction of the ceiling", ylim=(0, 1.05))
    fig.suptitle(f"raylight gpu_bench: {s['device']} ({s.get('attention_backend')} attention)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"written: {path}"
