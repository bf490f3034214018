"""Host overhead per decode step: scheduling, batch building, sampling bookkeeping, update.

The model is replaced by a stand-in that returns fixed logits, so what is timed is everything an
engine step does on the host around the model: `Scheduler.schedule`, the runner's tensor
conversion and ReqToToken update, `build_sampling_inputs`, the sampler, the copy-out, and
`Scheduler.update`. On a GPU a Llama-8B decode step takes 5-20 ms; the host must stay far below.

    python -m raylight.benchmarks.host_overhead [--batch 1 64 256] [--steps 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from raylight.engine.admission import make_policy
from raylight.engine.config import EngineConfig, SchedulerConfig
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.model_config import ModelArchConfig, RopeConfig
from raylight.engine.model_runner import ModelRunner
from raylight.engine.parallel import SINGLE_RANK
from raylight.engine.request import Request
from raylight.engine.sampling_params import SamplingParams
from raylight.engine.scheduler import Scheduler


class FixedLogitsModel(nn.Module):
    """Stands in for a model: no math, the same logits for every sampled position."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        logits = torch.randn(vocab_size, generator=torch.Generator().manual_seed(0))
        self.register_buffer("logits", logits)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: object) -> Tensor:
        # One "hidden state" per token: only the row count matters.
        return input_ids

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(hidden.shape[0], -1)


def _config(batch: int, vocab: int, max_model_len: int, device: str, graphs: bool) -> EngineConfig:
    arch = ModelArchConfig(
        architecture="LlamaForCausalLM", vocab_size=vocab, hidden_size=8, intermediate_size=8,
        num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, rms_norm_eps=1e-5,
        rope=RopeConfig(theta=1e4), max_position_embeddings=max_model_len,
        tie_word_embeddings=False, qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False,
        sliding_window=None, torch_dtype="float32", bos_token_id=None, eos_token_ids=(0,),
    )  # fmt: skip
    return EngineConfig(
        model_dir=Path("."), arch=arch, dtype=torch.float32, device=torch.device(device),
        scheduler=SchedulerConfig(batch, 8192, max_model_len, "conservative"),
        tensor_parallel_size=1, num_kv_slots=batch * max_model_len + 1,
        gpu_memory_utilization=0.9, seed=0, kv_cache_dtype=torch.float32,
        # The stand-in model never calls attention; "triton" only makes decode graphs possible.
        attention_backend="triton" if graphs else "torch", enforce_eager=not graphs,
        cuda_graph_max_batch=batch, prefill_graph_max_tokens=0,  # decode steps only here
    )  # fmt: skip


def measure(
    batch: int, steps: int, vocab: int, params: SamplingParams, device: str, graphs: bool = False
) -> dict[str, float]:
    prompt_len, max_len = 16, 32 + steps
    config = _config(batch, vocab, max_len, device, graphs)
    runner = ModelRunner(config, SINGLE_RANK, model=FixedLogitsModel(vocab).to(device))
    allocator = SlotAllocator(runner.num_slots)
    sched = Scheduler(config.scheduler, allocator, make_policy("conservative"))
    for i in range(batch):
        sched.add(
            Request(
                request_id=str(i), prompt_token_ids=[1 + i % 7] * prompt_len, params=params,
                max_tokens=steps + 8, sample_seed=i, stop_token_ids=frozenset(),
            )  # fmt: skip
        )
    # Prefill (one step), then time decode steps only.
    batch0 = sched.schedule()
    assert batch0 is not None and len(batch0.requests) == batch
    result = runner.execute(batch0)
    sched.update(batch0, result.token_ids, result.logprobs)
    t_sched = t_exec = t_update = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        b = sched.schedule()
        t1 = time.perf_counter()
        result = runner.execute(b)
        t2 = time.perf_counter()
        sched.update(b, result.token_ids, result.logprobs)
        t3 = time.perf_counter()
        assert b is not None and b.decode_only and len(b.requests) == batch
        t_sched, t_exec, t_update = t_sched + t1 - t0, t_exec + t2 - t1, t_update + t3 - t2
    ms = 1000.0 / steps
    return {
        "batch": batch,
        "step_ms": (t_sched + t_exec + t_update) * ms,
        "schedule_ms": t_sched * ms,
        "execute_ms": t_exec * ms,
        "update_ms": t_update * ms,
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the fixed logits live")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay decode steps from CUDA graphs (cuda only), as the engine does",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = {
        "greedy": SamplingParams(temperature=0.0, max_tokens=None),
        "top_p_top_k": SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=None),
    }
    rows = []
    for name, params in cases.items():
        for b in args.batch:
            graphs = args.cuda_graphs
            measure(b, 20, args.vocab, params, args.device, graphs)  # warm-up
            row = measure(b, args.steps, args.vocab, params, args.device, graphs)
            rows.append({"sampling": name, **row})
    report = {
        "benchmark": "host_overhead",
        "device": _device_name(args.device),
        "machine": f"{platform.machine()}, torch threads: {torch.get_num_threads()}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "vocab": args.vocab,
        "cuda_graphs": args.cuda_graphs,
        "command": "python -m raylight.benchmarks.host_overhead "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "results": rows,
        "summary": {
            f"{r['sampling']}_b{r['batch']}_step_ms": round(r["step_ms"], 4) for r in rows
        },
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'sampling':<12} {'batch':>5} {'step ms':>8} {'sched':>7} {'exec':>7} {'update':>7}")
    for r in rows:
        print(
            f"{r['sampling']:<12} {r['batch']:>5} {r['step_ms']:>8.3f} {r['schedule_ms']:>7.3f} "
            f"{r['execute_ms']:>7.3f} {r['update_ms']:>7.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
