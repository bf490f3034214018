"""Command-line flags of gpu_bench and `--engine-opt key=value` parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

ALL_SECTIONS = ("ceilings", "kernels", "latency", "hf", "offline", "sharegpt")
# Share of the remaining time budget each section may take, among those still to run.
SECTION_WEIGHTS = {"ceilings": 0.03, "kernels": 0.10, "latency": 0.15, "hf": 0.32,
                   "offline": 0.25, "sharegpt": 0.15}  # fmt: skip


def parse_value(text: str) -> object:
    """'true'/'false' -> bool, 'none' -> None, ints and floats as numbers, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_engine_opts(items: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--engine-opt wants key=value, got {item!r}")
        opts[key.strip()] = parse_value(value.strip())
    return opts


def parse_sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(ALL_SECTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; known: {ALL_SECTIONS}")
    return names


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m raylight.benchmarks.gpu_bench",
        description="Ceilings, attention kernels, batch-1 latency, offline throughput and HF "
        "continuous batching side by side, in one run: JSON + PNG + a table.",
    )
    ap.add_argument("--model", type=Path, default=None,
                    help="model directory (e.g. from `raylight make-model --preset llama3-8b`); "
                         "needed by latency, hf, offline, sharegpt")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path; default $OUT (or .)/<device>-<date>-gpu-bench.json")
    ap.add_argument("--sections", type=parse_sections, default=list(ALL_SECTIONS),
                    help=f"comma-separated, run in this order (default: {','.join(ALL_SECTIONS)})")
    ap.add_argument("--time-budget-s", type=float, default=480.0,
                    help="total budget; later sections shrink or are skipped to respect it")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="raylight EngineOptions passed to LLM(...), e.g. attention_backend=triton;"
                         " repeatable")  # fmt: skip
    g = ap.add_argument_group("offline throughput (fixed lengths) and the ShareGPT-like mix")
    g.add_argument("--num-requests", type=int, default=1000)
    g.add_argument("--prompt-len", type=int, default=1024)
    g.add_argument("--output-len", type=int, default=1024)
    g.add_argument("--sharegpt-requests", type=int, default=1000)
    g = ap.add_argument_group("batch-1 latency")
    g.add_argument("--latency-prompt-len", type=int, default=1024)
    g.add_argument("--latency-output-len", type=int, default=256)
    g.add_argument("--latency-trials", type=int, default=3)
    g = ap.add_argument_group("HF continuous batching side by side")
    g.add_argument("--hf-requests", type=int, default=256)
    g.add_argument("--hf-prompt-len", type=int, default=512)
    g.add_argument("--hf-output-len", type=int, default=128)
    g.add_argument("--hf-est-tok-s", type=float, default=400.0,
                   help="expected HF output tok/s, to size the HF run to the time left "
                        "(H200, 512 x 512/128: 449)")  # fmt: skip
    g = ap.add_argument_group("ceilings")
    g.add_argument("--copy-bytes", type=int, default=4 * 2**30)
    g.add_argument("--gemm-n", type=int, default=8192)
    g.add_argument("--ceiling-iters", type=int, default=10)
    g = ap.add_argument_group("attention kernels (Llama-3.1-8B shapes by default)")
    g.add_argument("--kernel-batches", type=_ints, default=(1, 64, 256))
    g.add_argument("--kernel-contexts", type=_ints, default=(1024, 4096, 16384))
    g.add_argument("--kernel-prefill-lens", type=_ints, default=(4096, 16384))
    g.add_argument("--kernel-heads", type=int, default=32)
    g.add_argument("--kernel-kv-heads", type=int, default=8)
    g.add_argument("--kernel-head-dim", type=int, default=128)
    g.add_argument("--kernel-dtype", choices=["bfloat16", "float16", "float32"],
                   default="bfloat16")
    g.add_argument("--kernel-warmup", type=int, default=3)
    g.add_argument("--kernel-iters", type=int, default=20)
    return ap
