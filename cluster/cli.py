"""The `raylight` command line.

Each subcommand is a pair of functions: `_add_<name>(subparsers)` declares its flags and sets
`handler`, and `_run_<name>(args) -> int` does the work. Heavy modules (torch, ray,
transformers) are imported inside the `_run_*` functions so `import raylight.cluster.cli` and
`raylight --help` stay fast.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from types import MappingProxyType

from raylight.cluster.cli_bench import add_bench
from raylight.cluster.cli_generate import add_generate
from raylight.cluster.cli_serve import add_serve
from raylight.cluster.cli_sim import add_sim

_SIZE_UNITS = MappingProxyType({
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
})


def parse_size(text: str) -> int:
    """Bytes from "5GB" (10**9, as HF's max_shard_size), "5GiB" (2**30), "500MB" or "1024"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use e.g. 5GB, 500MiB, 1024")
    size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def _add_make_model(subparsers: argparse._SubParsersAction) -> None:
    # Pure-data modules: no torch import while the parser is built.
    from raylight.engine.modelgen.archs import ARCHS
    from raylight.engine.modelgen.presets import PRESETS

    p = subparsers.add_parser(
        "make-model",
        help="write a random-weight HF model directory (config, tokenizer, safetensors)",
        description="Write a random-weight HF model directory loadable by transformers.",
    )
    p.add_argument("--arch", choices=sorted(ARCHS), default=None,
                   help="architecture (default: the preset's, llama unless qwen2.5-*)")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help="model shape")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", default="auto",
                   help="where random tensors are drawn: cpu, cuda[:N], or auto (cuda when "
                        "available; much faster for big presets, but values differ from cpu)")
    p.add_argument("--max-shard-size", type=parse_size, default="5GiB",
                   help="largest safetensors shard, e.g. 5GB (10^9), 5GiB (2^30); "
                        "default 5GiB")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_run_make_model)


def _run_make_model(args: argparse.Namespace) -> int:
    import torch

    from raylight.engine.modelgen.make_model import make_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = make_model(
        args.arch, args.preset, args.out, seed=args.seed, dtype=args.dtype, device=device,
        max_shard_bytes=args.max_shard_size, progress=not args.no_progress,
    )
    print(out)
    return 0


# Subcommands in the order `raylight --help` lists them; add new ones here.
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_serve,
    add_generate,
    _add_make_model,
    add_bench,
    add_sim,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylight", description="raylight LLM inference")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
