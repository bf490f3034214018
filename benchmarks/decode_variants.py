"""Device time of one batch-1 decode step under variants of the same loaded model, in one
process: no reloads, one machine, one KV state, so differences of 1% are visible.

The step is the decode graph's body (engine/cuda_graphs.py: ReqToToken write, embedding, the
layers, the final norm), captured afresh for each variant and replayed with the static inputs
of a real request decoding after a 1024-token prompt. Variants:
- kernel choices: fused decode layers, PDL (engine options), decode-attention split counts,
  RMSNorm warps, the one-row linears without kernels/row_gemv.py (no_row_gemv), attention as
  three launches instead of kernels/decode_rope_attention.py's one (unfused_attention), that
  kernel with the split merge as a second launch (rope_stage2);
- ablations that drop one kind of work from the chain (attention with its rotary and KV store,
  the norms, SiLU-and-mul) to show what it costs in place, launch gaps included. An ablated
  step computes garbage by design; only its time is used.
Variants alternate over --rounds rounds; each figure is the median of the rounds.

The timed replays sit in an NVTX range "decode_step". The device machine has Nsight Compute
(/usr/local/cuda/bin/ncu), but on 2026-12-02 `ncu --nvtx --nvtx-include "decode_step/"
--graph-profiling node` over this script had not finished loading the engine after 300 s
(every kernel of the load is intercepted). Profile a short kernel-only script instead.

    TRITON_INTERPRET=0 python -m raylight.benchmarks.decode_variants --model DIR [--out FILE]
        [--variants plain,fused,...] [--rounds 3] [--replays 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import triton

import raylight.engine.layers.linear as linear_mod
from raylight.benchmarks.gpu_bench_cli import parse_engine_opts
from raylight.engine.attention.registry import make_attention_backend
from raylight.engine.cuda_graphs import DecodeGraphs
from raylight.engine.layers.activation import SiluAndMul
from raylight.engine.layers.attention import Attention
from raylight.engine.layers.fused import use_fused_kernels
from raylight.engine.layers.norm import RMSNorm
from raylight.engine.llm import LLM
from raylight.engine.sampling_params import SamplingParams
from raylight.kernels import decode_attention, decode_rope_attention, rmsnorm


@contextlib.contextmanager
def _patched(model: torch.nn.Module, kind: type, forward: Callable) -> Iterator[None]:
    """Replaces forward on every `kind` module of the model for the duration."""
    modules = [m for m in model.modules() if isinstance(m, kind)]
    for m in modules:
        m.forward = forward
    try:
        yield
    finally:
        for m in modules:
            del m.forward


@contextlib.contextmanager
def _set(module: object, name: str, value: object) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _no_attention(q, k, v, positions, rope, ctx):
    return q.reshape(q.shape[0], -1)


def _no_norm(x, residual=None):
    return x, (x if residual is None else residual)


def _no_silu(x):
    return x[:, : x.shape[1] // 2]


@contextlib.contextmanager
def variant(name: str, runner) -> Iterator[object]:
    """Sets up variant `name` on the runner's model (parts joined by "+" combine, e.g.
    "splits_8+tiles_32_4_3"); yields the attention backend to use."""
    model, c = runner.model, runner.config
    backend = runner.backend
    with contextlib.ExitStack() as stack:
        parts = name.split("+")
        if any(part in ("fused", "pdl") for part in parts):  # the engine's own settings after
            stack.callback(use_fused_kernels, model, c.fused_kernels, c.skinny_linear, c.pdl,
                           c.fuse_decode_layers)  # fmt: skip
        for part in parts:
            backend = _apply(part, runner, backend, stack)
        yield backend


def _apply(name: str, runner, backend: object, stack: contextlib.ExitStack) -> object:
    """One part of a variant; returns the attention backend from then on."""
    model, c = runner.model, runner.config
    if name == "fused":
        use_fused_kernels(model, c.fused_kernels, c.skinny_linear, c.pdl, fuse_decode=True)
    elif name.startswith("splits_"):  # every decode attention with this many splits
        splits = int(name.removeprefix("splits_"))
        stack.enter_context(_set(decode_attention, "choose_num_splits", lambda *args: splits))
    elif name.startswith("tiles_"):  # decode attention tiles: tiles_<block_n>_<warps>_<stages>
        block_n, warps, stages = (int(x) for x in name.removeprefix("tiles_").split("_"))
        tiles = decode_attention.DecodeTiles(block_n, warps, stages)
        stack.enter_context(_set(decode_attention, "choose_tiles", lambda *args: tiles))
    elif name.startswith("merge_tile_"):  # the one-launch attention's merge tile (split cap)
        tile = int(name.removeprefix("merge_tile_"))
        stack.enter_context(_set(decode_rope_attention, "MERGE_TILE", tile))
    elif name.startswith("norm_warps_"):
        stack.enter_context(_set(rmsnorm, "MAX_WARPS", int(name.removeprefix("norm_warps_"))))
    elif name == "no_row_gemv":  # the one-row linears as before kernels/row_gemv.py
        stack.enter_context(_set(linear_mod, "choose_row_config", lambda *args: None))
    elif name == "unfused_attention":  # rope_kv_store + two decode stages, as before
        stack.enter_context(_set(backend, "fuse_decode_rope", False))
    elif name == "rope_stage2":  # the fused kernel, merged by a second launch (uncapped S)
        stack.enter_context(_set(decode_rope_attention, "MERGE_IN_KERNEL", False))
    elif name == "pdl":
        use_fused_kernels(model, c.fused_kernels, c.skinny_linear, True, c.fuse_decode_layers)
        backend = make_attention_backend(c.attention_backend, pdl=True,
                                         fuse_decode_rope=c.fuse_decode_attention)  # fmt: skip
    else:
        drops = {"no_attention": ["attention"], "no_norms": ["norms"], "no_silu": ["silu"],
                 "linears_only": ["attention", "norms", "silu"]}  # fmt: skip
        if name != "plain" and name not in drops:
            raise ValueError(f"unknown variant {name!r}")
        for drop in drops.get(name, []):
            kind, forward = {"attention": (Attention, _no_attention),
                             "norms": (RMSNorm, _no_norm),
                             "silu": (SiluAndMul, _no_silu)}[drop]  # fmt: skip
            stack.enter_context(_patched(model, kind, forward))
    return backend


def _steady_request(llm: LLM, prompt_len: int) -> None:
    core = llm.core
    params = SamplingParams(temperature=0.0, max_tokens=4096, ignore_eos=True)
    core.add(core.make_request("r0", [(7 * j) % 1000 + 10 for j in range(prompt_len)], params, 0))
    for _ in range(8):  # prefill, then decode steps through the graph
        core.step()
    if core.runner.graphs is None or core.runner.graphs.num_replays == 0:
        raise RuntimeError("the decode steps did not replay a graph")


def time_variant(name: str, runner, replays: int) -> float:
    """Milliseconds per replay of a freshly captured batch-1 step graph under `name`."""
    base = runner.graphs
    with variant(name, runner) as backend, torch.inference_mode():
        graphs = DecodeGraphs(runner.model, backend, runner.k_caches, runner.v_caches,
                              runner.req_to_token, 1)  # fmt: skip
        graphs._static.copy_(base._static)  # lane 0 of the live request
        graphs.capture()
        graph = graphs._graphs[1]
        for _ in range(10):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.cuda.nvtx.range("decode_step"):  # for ncu --nvtx-include "decode_step/"
            for _ in range(replays):
                graph.replay()
        end.record()
        end.synchronize()
    del graphs, graph
    return start.elapsed_time(end) / replays


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--variants", default="plain,no_attention,no_norms,no_silu,linears_only,"
                                         "fused,pdl")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    opts = {"max_model_len": 8192, "max_num_seqs": 1, "cuda_graph_max_batch": 1,
            **parse_engine_opts(a.engine_opt)}  # fmt: skip
    llm = LLM(a.model, progress=False, **opts)
    _steady_request(llm, a.prompt_len)
    runner = llm.core.runner
    names = [n.strip() for n in a.variants.split(",") if n.strip()]
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(a.rounds):
        for name in names:
            times[name].append(time_variant(name, runner, a.replays))
            torch.cuda.empty_cache()
    med = {n: statistics.median(t) for n, t in times.items()}
    out = {
        "benchmark": "decode_variants",
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "command": " ".join(sys.argv),
        "engine_options": {k: str(v) for k, v in opts.items()},
        "what": "ms per replay of the batch-1 decode graph body (no LM head, no sampling)",
        "median_ms": med,
        "rounds_ms": times,
    }
    for n in names:
        delta = med[n] - med.get("plain", med[n])
        print(f"{n:>16}: {med[n]:.4f} ms  ({delta:+.4f} vs plain)", flush=True)
    if a.out is not None:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
