"""Tensor parallelism inside one engine replica: rank 0 runs the scheduler and samples; ranks
1..N-1 are worker processes that run their model shard on the batch rank 0 broadcasts each step.
With async scheduling, the input ids a step reads from the step before (pending lanes) reach the
workers from rank 0's device over the device group, inside the forward pass.

Per step, rank 0 sends one fixed-size header and one int64 payload over a gloo (CPU) group; the
model's own collectives (all-reduce, all-gather of logits) use the device group (NCCL on GPU,
gloo on CPU). Workers never see Python objects or requests, only the batch arrays.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import socket
import weakref
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from raylight.engine.batch import Batch
from raylight.engine.config import EngineConfig
from raylight.engine.engine_core import EngineCore
from raylight.engine.model_runner import LaunchedStep, ModelRunner
from raylight.engine.parallel import TPGroup

# num_tokens, num_reqs, num_sampled, max_q_len, max_kv_len, stop flag, num table entries,
# num pending lanes (async scheduling: their ids come from rank 0 over the device group)
_HEADER = 8
_ARRAYS = (
    "input_ids", "positions", "out_slots", "token_rows", "cu_seqlens_q", "seq_lens_kv", "req_rows",
    "num_new", "sample_indices", "logits_indices", "table_rows", "table_positions", "table_slots",
    "pending_lanes", "pending_rows",
)  # fmt: skip


def create_tp_engine_core(config: EngineConfig, progress: bool) -> EngineCore:
    size = config.tensor_parallel_size
    if config.device.type == "cuda" and torch.cuda.device_count() < size:
        raise ValueError(
            f"tensor_parallel_size={size} needs {size} GPUs, found {torch.cuda.device_count()}"
        )
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    ctx = mp.get_context("spawn")
    workers = [
        ctx.Process(target=_worker_main, args=(rank, init_method, config), daemon=True)
        for rank in range(1, size)
    ]
    for w in workers:
        w.start()
    tp, cpu_group = _init_rank(0, init_method, config)
    runner = TPModelRunner(_rank_config(config, 0), tp, cpu_group, progress)
    weakref.finalize(runner, _stop_workers, cpu_group, workers)
    return EngineCore(config, runner)


class TPModelRunner(ModelRunner):
    """Rank 0's runner: broadcasts each batch before running its own shard on it."""

    def __init__(
        self, config: EngineConfig, tp: TPGroup, cpu_group: dist.ProcessGroup, progress: bool
    ) -> None:
        super().__init__(config, tp, progress)
        self.cpu_group = cpu_group

    def launch(
        self, batch: Batch, prev: LaunchedStep | None = None, keep_logits: bool = False
    ) -> LaunchedStep:
        _send_batch(batch, self.cpu_group)
        return super().launch(batch, prev, keep_logits)


def _rank_config(config: EngineConfig, rank: int) -> EngineConfig:
    if config.device.type != "cuda":
        return config
    return dataclasses.replace(config, device=torch.device("cuda", rank))


def _init_rank(
    rank: int, init_method: str, config: EngineConfig
) -> tuple[TPGroup, dist.ProcessGroup]:
    size = config.tensor_parallel_size
    backend = "nccl" if config.device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=size,
        timeout=timedelta(minutes=10),
    )  # fmt: skip
    cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD
    return TPGroup(rank, size, dist.group.WORLD), cpu_group


def _worker_main(rank: int, init_method: str, config: EngineConfig) -> None:
    tp, cpu_group = _init_rank(rank, init_method, config)
    runner = ModelRunner(_rank_config(config, rank), tp, progress=False)
    while (batch := _recv_batch(cpu_group)) is not None:
        runner.forward(batch)
    dist.destroy_process_group()


def _send_batch(batch: Batch, group: dist.ProcessGroup) -> None:
    arrays = [getattr(batch, name) for name in _ARRAYS]
    header = torch.tensor(
        [batch.num_tokens, len(batch.requests), len(batch.sample_indices),
         batch.max_q_len, batch.max_kv_len, 0, len(batch.table_rows), len(batch.pending_lanes)],
        dtype=torch.int64,
    )  # fmt: skip
    dist.broadcast(header, src=0, group=group)
    dist.broadcast(torch.from_numpy(np.concatenate(arrays)), src=0, group=group)


def _recv_batch(group: dist.ProcessGroup) -> Batch | None:
    header = torch.empty(_HEADER, dtype=torch.int64)
    dist.broadcast(header, src=0, group=group)
    t, b, s, max_q, max_kv, stop, e, p = header.tolist()
    if stop:
        return None
    sizes = [t, t, t, t, b + 1, b, b, b, s, s, e, e, e, p, p]
    payload = torch.empty(sum(sizes), dtype=torch.int64)
    dist.broadcast(payload, src=0, group=group)
    parts = np.split(payload.numpy(), np.cumsum(sizes)[:-1])
    fields = dict(zip(_ARRAYS, parts))
    return Batch(requests=[], max_q_len=max_q, max_kv_len=max_kv, **fields)


def _stop_workers(group: dist.ProcessGroup, workers: list) -> None:
    try:
        dist.broadcast(torch.tensor([0, 0, 0, 0, 0, 1, 0, 0]), src=0, group=group)
    except Exception:  # noqa: BLE001 - workers may already be gone at interpreter exit
        pass
    for w in workers:
        w.join(timeout=10)
        if w.is_alive():
            w.terminate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
