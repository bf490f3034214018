"""`raylight sim`: simulate one engine replica's scheduler under a workload, per admission policy.

Without --rate, the rate is the first point of a geometric grid (10% steps) at which the
aggressive policy misses the SLA (fewer than 95% of requests meet it); every policy then runs
at that rate. --sweep (or --plot) also runs every policy at the grid rates around it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Spelled out so that building the parser imports no numpy (engine.sim's names).
WORKLOADS = ("sharegpt", "reasoning", "bursty", "multiturn")
POLICIES = ("past-future", "aggressive", "conservative")


def add_sim(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulate the scheduler and admission policies with a step-time cost model",
        description="Event-driven simulation of one engine replica (the real scheduler, KV "
        "allocator and admission policies; a cost model instead of a GPU).",
    )
    p.add_argument("--workload", choices=WORKLOADS, default="sharegpt")
    p.add_argument("--policy", choices=(*POLICIES, "all"), default="all")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests per second (default: where aggressive first misses the SLA)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also run every policy at the grid rates around the miss rate",
    )
    p.add_argument(
        "--grid-factor",
        type=float,
        default=1.1,
        help="ratio between neighbouring rates of the miss-rate search grid (default 1.1)",
    )
    p.add_argument(
        "--base-rate",
        type=float,
        default=None,
        help="anchor of the miss-rate grid (default: per workload, set for the H200 model)",
    )
    p.add_argument(
        "--refine-factor",
        type=float,
        default=None,
        help="after the grid search, step from the last rate that met the SLA by this factor "
        "(e.g. 1.02) to the first that misses it",
    )
    p.add_argument("--num-requests", type=int, default=5000)
    p.add_argument("--pool-tokens", type=int, default=1_000_000, help="KV pool size in tokens")
    p.add_argument("--max-num-seqs", type=int, default=1024)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cost-model",
        choices=("h200-llama3-8b", "h100-llama3-8b", "h100x4-llama3-70b", "l4-llama3-8b"),
        default="h200-llama3-8b",
        help="roofline step-time model of the replica (set --pool-tokens to match it)",
    )
    p.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        help="simulate without the token-level prefix cache (on by default, as in the engine)",
    )
    p.add_argument(
        "--compare-prefix-cache",
        action="store_true",
        help="also run every policy without the cache at the chosen rate and report hit rates "
        "(token-level vs 16-token blocks) and TTFT with vs without it",
    )
    p.add_argument(
        "--scenario",
        default=None,
        help="free text naming the model, GPU and pool being simulated (copied into the JSON)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, keyed by policy")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="write a PNG of goodput vs rate (needs matplotlib; implies --sweep)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(handler=run_sim)


def run_sim(args: argparse.Namespace) -> int:
    from raylight.engine.sim.cost_model import COST_MODELS
    from raylight.engine.sim.loop import SimConfig
    from raylight.engine.sim.sweep import (
        SimSetup,
        find_miss_rate,
        refine_miss_rate,
        run_policies,
        sweep,
    )

    policies = list(POLICIES) if args.policy == "all" else [args.policy]
    config = SimConfig(
        args.pool_tokens,
        args.max_num_seqs,
        args.max_num_batched_tokens,
        prefix_cache=args.prefix_cache,
    )
    cost = COST_MODELS[args.cost_model]()
    setup = SimSetup(args.workload, args.num_requests, args.seed, config, cost)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    meta = _meta(args, setup.cost)
    if args.rate is not None:
        rate, searched = args.rate, {}
        meta["rate_source"] = "--rate"
    else:
        if args.grid_factor <= 1.0:
            raise SystemExit("--grid-factor must be above 1")
        rate, searched = find_miss_rate(setup, factor=args.grid_factor, progress=progress,
                                        base_rate=args.base_rate)  # fmt: skip
        meta["rate_source"] = (
            f"first grid rate (x{args.grid_factor:g} steps) where aggressive attainment < 0.95"
        )
        if args.refine_factor is not None:
            if not 1.0 < args.refine_factor < args.grid_factor:
                raise SystemExit("--refine-factor must be above 1 and below --grid-factor")
            below = max(r for r in searched if r < rate)
            rate = refine_miss_rate(setup, below, rate, args.refine_factor, searched,
                                    progress=progress)  # fmt: skip
            meta["rate_source"] += (
                f", refined in x{args.refine_factor:g} steps from {below} (which meets it)"
            )
        meta["search"] = {str(r): rep.sla_attainment for r, rep in sorted(searched.items())}
    meta["rate"] = rate
    todo = [p for p in policies if not (p == "aggressive" and rate in searched)]
    reports = run_policies(setup, todo, rate, progress)
    if "aggressive" in policies and rate in searched:
        reports["aggressive"] = searched[rate]
    result: dict[str, object] = {p: reports[p].to_json() for p in policies}
    if args.compare_prefix_cache:
        from raylight.engine.sim.prefix_effect import prefix_effect

        cached = reports if args.prefix_cache else None
        effects = prefix_effect(setup, policies, rate, cached, progress)
        meta["prefix_cache_effect"] = {p: e.to_json() for p, e in effects.items()}
    if args.sweep or args.plot:
        points = sweep(setup, policies, rate, factor=args.grid_factor, progress=progress)
        meta["sweep"] = {
            str(r): {p: rep.to_json() for p, rep in reps.items()} for r, reps in points.items()
        }
        if args.plot:
            from raylight.engine.sim.plot import plot_goodput

            title = f"{args.workload}: {args.num_requests} requests, {args.pool_tokens} KV tokens"
            meta["plot"] = str(plot_goodput(points, args.plot, title, miss_rate=rate))
    result["sim"] = meta
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result, policies)
    return 0


def _meta(args: argparse.Namespace, cost: object) -> dict[str, object]:
    """The run's settings, as recorded in the JSON."""
    meta: dict[str, object] = {
        "command": _command(args),
        "workload": args.workload,
        "num_requests": args.num_requests,
        "seed": args.seed,
        "pool_tokens": args.pool_tokens,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "prefix_cache": args.prefix_cache,
        "cost_model_name": args.cost_model,
        "cost_model": _asdict(cost),
    }
    if args.scenario:
        meta["scenario"] = args.scenario
    return meta


def _command(args: argparse.Namespace) -> str:
    """A command line that reproduces this run (every setting spelled out)."""
    import shlex

    words = ["raylight", "sim", "--workload", args.workload, "--policy", args.policy]
    if args.rate is not None:
        words += ["--rate", str(args.rate)]
    words += ["--num-requests", str(args.num_requests), "--pool-tokens", str(args.pool_tokens)]
    words += ["--max-num-seqs", str(args.max_num_seqs), "--seed", str(args.seed)]
    words += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    words += ["--cost-model", args.cost_model]
    if args.grid_factor != 1.1:
        words += ["--grid-factor", str(args.grid_factor)]
    if args.refine_factor is not None:
        words += ["--refine-factor", str(args.refine_factor)]
    if args.base_rate is not None:
        words += ["--base-rate", str(args.base_rate)]
    flags = {
        "--no-prefix-cache": not args.prefix_cache,
        "--compare-prefix-cache": args.compare_prefix_cache,
        "--sweep": args.sweep,
    }
    words += [flag for flag, on in flags.items() if on]
    if args.plot is not None:
        words += ["--plot", str(args.plot)]
    if args.scenario:
        words += ["--scenario", args.scenario]
    return shlex.join([*words, "--json"])


def _asdict(obj: object) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(obj)  # type: ignore[call-overload]


def _print_table(result: dict[str, object], policies: list[str]) -> None:
    meta = result["sim"]
    assert isinstance(meta, dict)
    print(f"workload {meta['workload']}, rate {meta['rate']} req/s ({meta['rate_source']})")
    print(
        f"{'policy':>14} {'goodput':>8} {'tight':>8} {'attain':>7} {'req/s':>7} "
        f"{'tok/s':>8} {'preempt':>8} {'kv mean':>8} {'kv p99':>7}"
    )
    for p in policies:
        r = result[p]
        assert isinstance(r, dict)
        t = r["throughput"]
        print(
            f"{p:>14} {r['goodput']:8.3f} {r['goodput_tight']:8.3f} "
            f"{r['sla_attainment']:7.3f} {t['requests_per_s']:7.3f} "
            f"{t['output_tokens_per_s']:8.0f} {r['preemptions']:8d} "
            f"{r['kv_util_mean']:8.3f} {r['kv_util_p99']:7.3f}"
        )
