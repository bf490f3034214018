"""One table from `raylight sim` result files: per workload and replica, past-future's goodput
against each baseline at the rate where aggressive first misses the SLA, preempted fractions,
and why each policy's requests missed the SLA (a late first token vs a token gap, and how many
gap misses were preempted).

    python -m raylight.benchmarks.sim_summary benchmarks/results/cpu-2026-11-22-sim-*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

POLICIES = ("past-future", "aggressive", "conservative")
TARGET_VS_CONSERVATIVE = 1.5
TARGET_VS_AGGRESSIVE = 1.2
TARGET_PREEMPTED = 0.01


def row(path: Path) -> dict[str, object] | None:
    """The summary of one result file, or None if it is not a three-policy `raylight sim` run."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(p in data for p in (*POLICIES, "sim")):
        return None
    meta, pf, aggr, cons = data["sim"], *(data[p] for p in POLICIES)
    out: dict[str, object] = {
        "file": path.name,
        "workload": meta["workload"],
        "cost_model": meta.get("cost_model_name", "h200-llama3-8b"),
        "pool_tokens": meta["pool_tokens"],
        "prefix_cache": meta.get("prefix_cache", False),
        "seed": meta["seed"],
        "rate": meta["rate"],
        "rate_source": meta.get("rate_source"),
        "pf_over_conservative": pf["goodput"] / cons["goodput"] if cons["goodput"] else None,
        "pf_over_aggressive": pf["goodput"] / aggr["goodput"] if aggr["goodput"] else None,
    }
    for name, rep in zip(("pf", "aggressive", "conservative"), (pf, aggr, cons)):
        n = rep["num_requests"]
        out[name] = {
            "goodput": rep["goodput"],
            "sla_attainment": rep["sla_attainment"],
            "preempted_fraction": rep["preempted_requests"] / n,
            "missed_ttft_only": rep.get("missed_ttft_only"),
            "missed_gap": _sum(rep, "missed_gap_only", "missed_both"),
            "missed_gap_preempted": rep.get("missed_gap_preempted"),
            "kv_full_steps": rep.get("kv_full_steps"),
        }
    vs_c, vs_a = out["pf_over_conservative"], out["pf_over_aggressive"]
    out["targets_met"] = {
        "vs_conservative": vs_c is not None and vs_c >= TARGET_VS_CONSERVATIVE,
        "vs_aggressive": vs_a is not None and vs_a >= TARGET_VS_AGGRESSIVE,
        "pf_preempted": pf["preempted_requests"] / pf["num_requests"] <= TARGET_PREEMPTED,
    }
    return out


def _sum(rep: dict[str, object], *keys: str) -> int | None:
    values = [rep.get(k) for k in keys]
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--finding", default=None, help="free text copied into the JSON")
    args = p.parse_args(argv)
    rows = [r for r in (row(f) for f in sorted(args.files)) if r is not None]
    if args.json:
        names = " ".join(str(f) for f in sorted(args.files))
        out: dict[str, object] = {"command": f"python -m raylight.benchmarks.sim_summary {names}"}
        if args.finding:
            out["finding"] = args.finding
        print(json.dumps({**out, "rows": rows}, indent=1))
        return 0
    print("rate: where aggressive first misses the SLA; * a rate given with --rate")
    print(
        f"{'workload':>10} {'cost model':>18} {'pool':>8} {'seed':>4} {'cache':>5} {'rate':>9} "
        f"{'PF/cons':>8} "
        f"{'PF/aggr':>8} {'PF pre%':>8} {'aggr pre%':>9} {'aggr miss ttft/gap(pre)':>24}"
    )
    for r in rows:
        pf, ag = r["pf"], r["aggressive"]
        assert isinstance(pf, dict) and isinstance(ag, dict)
        star = "*" if r["rate_source"] == "--rate" else " "
        misses = f"{ag['missed_ttft_only']}/{ag['missed_gap']}({ag['missed_gap_preempted']})"
        print(
            f"{r['workload']:>10} {r['cost_model']:>18} {r['pool_tokens']:>8} {r['seed']:>4} "
            f"{'on' if r['prefix_cache'] else 'off':>5} {r['rate']:>8.3f}{star} "
            f"{_fmt(r['pf_over_conservative'])} {_fmt(r['pf_over_aggressive'])} "
            f"{100 * pf['preempted_fraction']:>8.2f} {100 * ag['preempted_fraction']:>9.2f} "
            f"{misses:>24}"
        )
    return 0


def _fmt(x: object) -> str:
    return f"{x:>8.2f}" if isinstance(x, float) else f"{'-':>8}"


if __name__ == "__main__":
    sys.exit(main())
