"""Goodput-vs-rate plot of a sweep. matplotlib is imported here only (an optional dependency)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from raylight.engine.sim.metrics import PolicyReport


def plot_goodput(
    points: Mapping[float, Mapping[str, PolicyReport]],
    path: Path,
    title: str,
    miss_rate: float | None = None,
) -> Path:
    """Writes a PNG: goodput (paper SLA, solid; tight SLA, dashed) per policy against rate."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted(points)
    policies = sorted({p for reports in points.values() for p in reports})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, policy in enumerate(policies):
        color = f"C{i}"
        have = [r for r in rates if policy in points[r]]
        ax.plot(
            have,
            [points[r][policy].goodput for r in have],
            "o-",
            color=color,
            label=f"{policy} (TTFT<=10s, ITL<=1.5s)",
        )
        ax.plot(
            have,
            [points[r][policy].goodput_tight for r in have],
            "x--",
            color=color,
            alpha=0.6,
            label=f"{policy} (TTFT<=2s, ITL<=0.5s)",
        )
    if miss_rate is not None:
        ax.axvline(miss_rate, color="grey", linestyle=":", label="aggressive first misses")
    ax.plot(rates, rates, color="black", linewidth=0.5, label="offered rate")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("goodput (req/s meeting the SLA)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
