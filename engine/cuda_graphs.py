"""CUDA graphs for decode-only batches: captured once at start-up, replayed every decode step.

One graph per batch-size bucket (1, 2, 4, 8, then multiples of 8 up to `max_batch`), all sharing
one memory pool and one set of static inputs. A batch of B requests replays the smallest bucket
>= B; lanes B..bucket-1 are padding:
- input id 0 at position 0, K/V written to the pool's dummy slot 0 (never handed out);
- ReqToToken row 0 (never handed out), seq_len 1: a padded lane attends only to slot 0, which
  it has just written itself, so it computes finite values and reads nothing of a real lane.
Real lanes never read slot 0 or row 0, so padding cannot leak into them.

What is baked into a graph: the batch size, tensor addresses and the attention's split count,
chosen from `max_kv_len = max_model_len` (the split-K decode kernel is correct for any length
up to it). Everything that changes per step lives in the static input buffers.
The graph ends at the final norm: the LM head runs eagerly on the real lanes only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from raylight.engine.attention.backend import AttentionBackend, AttentionMetadata
from raylight.engine.batch import Batch
from raylight.engine.layers.attention import ForwardContext

# Rows of the static input buffer [5, max_batch], in this order.
_IDS, _POS, _SLOTS, _ROWS, _LENS = range(5)
_PAD = (0, 0, 0, 0, 1)  # id, position, slot, ReqToToken row, seq_len of a padded lane


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, ... up to and including max_batch (max_batch >= 1)."""
    sizes = [s for s in (1, 2, 4) if s < max_batch]
    sizes += list(range(8, max_batch, 8))
    return sorted(set(sizes + [max_batch]))


def write_table(
    req_to_token: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor
) -> None:
    """req_to_token[rows[i], positions[i]] = slots[i]; rows, positions, slots: int64 [N]."""
    req_to_token[rows, positions] = slots.to(torch.int32)


def write_pending(
    ids: torch.Tensor, pending: tuple[torch.Tensor | None, torch.Tensor] | None
) -> None:
    """ids[lanes] = pending ids, for pending = (lanes, ids); lanes None: the first len(ids)
    lanes, in order (one copy)."""
    if pending is None:
        return
    lanes, new_ids = pending
    if lanes is None:
        ids[: new_ids.shape[0]].copy_(new_ids)
    else:
        ids.index_copy_(0, lanes, new_ids)


def capture_in_order(
    device: torch.device, bodies: list[tuple[object, Callable[[], object]]]
) -> tuple[dict, dict, int]:
    """Runs each (key, body) once eagerly (compiling its Triton kernels outside capture), then
    captures it, in the given order, all graphs sharing one memory pool (capture the largest
    first: later captures reuse its free blocks). Returns the graphs and each capture's output
    by key, and the device memory the captures took (measured)."""
    graphs, outputs, pool = {}, {}, None
    free_before = torch.cuda.mem_get_info(device)[0]
    for key, body in bodies:
        body()
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs[key] = body()
        pool = graph.pool() if pool is None else pool
        graphs[key] = graph
    torch.cuda.synchronize(device)
    return graphs, outputs, free_before - torch.cuda.mem_get_info(device)[0]


class DecodeGraphs:
    """Owns the captured graphs, their memory pool and their static inputs (one device)."""

    def __init__(
        self,
        model: nn.Module,
        backend: AttentionBackend,
        k_caches: list[torch.Tensor],
        v_caches: list[torch.Tensor],
        req_to_token: torch.Tensor,
        max_batch: int,
    ) -> None:
        self.model = model
        self.backend = backend
        self.k_caches = k_caches
        self.v_caches = v_caches
        self.req_to_token = req_to_token  # int32 [rows, max_model_len]
        self.max_model_len = req_to_token.shape[1]
        self.sizes = bucket_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        device = req_to_token.device
        n = self.max_batch
        self._host = torch.zeros((5, n), dtype=torch.int64, pin_memory=True)
        self._host_np = self._host.numpy()
        self._host_np[:] = np.asarray(_PAD, dtype=np.int64)[:, None]
        self._static = self._host.to(device)  # int64 [5, max_batch]
        self._cu_seqlens = torch.arange(n + 1, dtype=torch.int64, device=device)
        self._copied = torch.cuda.Event()
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._hidden: dict[int, torch.Tensor] = {}  # bucket -> [bucket, hidden] graph output
        self.pool_bytes = 0  # device memory the capture took (measured, for reports)
        self.num_replays = 0

    def capture(self) -> None:
        """Captures every bucket, largest first (later captures reuse the pool's free blocks).
        Must run after the KV pool is allocated; writes only slot 0 and ReqToToken row 0."""
        bodies = [(size, lambda s=size: self._body(s)) for size in reversed(self.sizes)]
        self._graphs, self._hidden, self.pool_bytes = capture_in_order(self._static.device, bodies)

    def can_run(self, batch: Batch) -> bool:
        b = batch.req_rows.shape[0]
        return (
            batch.decode_only
            and 0 < b <= self.max_batch
            and batch.num_tokens == b
            and batch.sample_indices.shape[0] == b
            and batch.max_kv_len <= self.max_model_len
            and bool((batch.logits_indices == np.arange(b)).all())
        )

    def run(
        self, batch: Batch, pending: tuple[torch.Tensor | None, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Replays the bucket of a decode-only batch (`can_run`); returns hidden states [B, hidden]
        of the real lanes (a view of the graph's output: valid until the next replay).
        `pending`: (lanes, ids) int64 device tensors: input ids that the step before sampled,
        written over the batch's placeholders on the device (`write_pending`)."""
        b = batch.req_rows.shape[0]
        size = self.sizes[bisect.bisect_left(self.sizes, b)]
        # The host buffer is reused: wait for the previous step's copy out of it (long done).
        self._copied.synchronize()
        h = self._host_np
        h[_IDS, :b] = batch.input_ids
        h[_POS, :b] = batch.positions
        h[_SLOTS, :b] = batch.out_slots
        h[_ROWS, :b] = batch.req_rows
        h[_LENS, :b] = batch.seq_lens_kv
        h[:, b:size] = np.asarray(_PAD, dtype=np.int64)[:, None]
        # The whole buffer (contiguous, <= 10 KB): a strided copy would go through pageable memory.
        self._static.copy_(self._host, non_blocking=True)
        self._copied.record()
        write_pending(self._static[_IDS], pending)
        self._graphs[size].replay()
        self.num_replays += 1
        return self._hidden[size][:b]

    def _body(self, size: int) -> torch.Tensor:
        """What a graph runs: the ReqToToken writes of the new tokens, then the model up to its
        final norm, on the first `size` lanes of the static inputs. -> hidden [size, hidden]"""
        ids, pos, slots, rows, lens = (self._static[i, :size] for i in range(5))
        write_table(self.req_to_token, rows, pos, slots)
        meta = AttentionMetadata(
            cu_seqlens_q=self._cu_seqlens[: size + 1],
            seq_lens_kv=lens,
            req_rows=rows,
            req_to_token=self.req_to_token,
            out_slots=slots,
            max_q_len=1,
            max_kv_len=self.max_model_len,
            decode_only=True,
        )
        ctx = ForwardContext(meta, self.backend, self.k_caches, self.v_caches)
        return self.model(ids, pos, ctx)
