"""Runs one batch through the model on this rank's device and samples the next tokens.

Owns the model shard, the device KV buffers and the device copy of the ReqToToken table. The
host never waits on the device except to copy out the sampled ids (and requested logprobs).
`launch` queues a step and returns at once; `LaunchedStep.result` waits for its ids, so the host
can schedule and launch the next step in between (overlap; see EngineCore.step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from raylight.engine.attention.backend import AttentionMetadata
from raylight.engine.attention.registry import make_attention_backend
from raylight.engine.batch import Batch, TokenLogprobs
from raylight.engine.config import EngineConfig
from raylight.engine.cuda_graphs import DecodeGraphs, write_table
from raylight.engine.host_to_device import HostToDevice
from raylight.engine.kv_sizing import MemoryProfile, profile_kv_bytes
from raylight.engine.layers.attention import ForwardContext
from raylight.engine.layers.fused import use_fused_kernels
from raylight.engine.models.registry import model_class
from raylight.engine.parallel import TPGroup
from raylight.engine.prefill_graphs import PrefillGraphs
from raylight.engine.request import Request
from raylight.engine.sampler import DeviceSample, Sampler, SamplerOutput, pack, unpack
from raylight.engine.sampling_inputs import build_sampling_inputs, needs_only_argmax
from raylight.engine.weights import iter_weights
from raylight.kernels.argmax import argmax_rows


@dataclass(slots=True)
class StepResult:
    token_ids: list[int]  # one per sampling request, in batch.sample_indices order
    logprobs: list[TokenLogprobs | None] | None  # None when no request asked for logprobs
    logits: torch.Tensor | None = None  # [S, vocab], only when asked for (tests compare them)


@dataclass(slots=True)
class LaunchedStep:
    """A step queued on the device. `sample` is None when no request samples; `host` is the
    packed results' copy to the host, complete once `copied` has (None: on the CPU, where
    everything already happened). `needs_history`: a request sampling here uses penalties, so
    no batch may be scheduled before this one's tokens are known."""

    batch: Batch
    requests: list[Request]  # the sampling requests, in sample_indices order
    sample: DeviceSample | None
    host: torch.Tensor | None
    copied: torch.cuda.Event | None
    needs_history: bool
    logits: torch.Tensor | None = None  # float32 [S, vocab] on the host, when asked for

    def result(self) -> StepResult:
        """Waits for the sampled ids (and logprobs) on the host."""
        if self.sample is None or self.host is None:
            return StepResult([], None)
        if self.copied is not None:
            self.copied.synchronize()
        result = _step_result(unpack(self.host, self.sample.num_top), self.requests)
        result.logits = self.logits
        return result


class ModelRunner:
    def __init__(
        self,
        config: EngineConfig,
        tp: TPGroup,
        progress: bool = True,
        model: torch.nn.Module | None = None,
    ) -> None:
        """Builds the model and loads its weights from `config.model_dir`, unless `model` is
        given (benchmarks pass a stand-in with the same `forward` / `compute_logits`).

        On CUDA without `num_kv_slots`: profile steps, then the KV pool from what is left, then
        the decode and prefill CUDA graphs (kv_sizing.py, cuda_graphs.py, prefill_graphs.py)."""
        self.config = config
        self.tp = tp
        self.device = config.device
        arch = config.arch
        sched = config.scheduler
        if model is None:
            with torch.device(self.device):
                model = model_class(arch.architecture)(
                    arch, tp, config.dtype, max_positions=sched.max_model_len
                )
            model.load_weights(iter_weights(config.model_dir, self.device, progress))
        use_fused_kernels(model, config.fused_kernels, config.skinny_linear, config.pdl,
                          config.fuse_decode_layers)  # fmt: skip
        self.model = model.eval()
        self.backend = make_attention_backend(config.attention_backend, pdl=config.pdl,
                                              fuse_decode_rope=config.fuse_decode_attention)
        graph_batch = self._graph_max_batch(tp)
        prefill_tokens = min(config.prefill_graph_max_tokens, sched.max_num_batched_tokens)
        prefill_tokens = prefill_tokens if graph_batch > 0 else 0
        kv_heads_local = max(1, arch.num_kv_heads // tp.size)
        self.memory_profile: MemoryProfile | None = None  # set when sized from free memory
        slots = config.num_kv_slots or self._slots_from_free_memory(
            kv_heads_local, graph_batch, prefill_tokens
        )
        self.num_slots = tp.min_int(slots, self.device)
        shape = (self.num_slots, kv_heads_local, arch.head_dim)
        self.k_caches = [
            torch.zeros(shape, dtype=config.kv_cache_dtype, device=self.device)
            for _ in range(arch.num_layers)
        ]
        self.v_caches = [torch.zeros_like(k) for k in self.k_caches]
        self.req_to_token = torch.zeros(
            (sched.max_num_seqs + 1, sched.max_model_len), dtype=torch.int32, device=self.device
        )
        self.uploader = HostToDevice(self.device)
        self.sampler = Sampler()
        self.graphs: DecodeGraphs | None = None
        if graph_batch > 0:
            self.graphs = DecodeGraphs(self.model, self.backend, self.k_caches, self.v_caches,
                                       self.req_to_token, graph_batch)  # fmt: skip
            with torch.inference_mode():
                self.graphs.capture()
        self.prefill_graphs: PrefillGraphs | None = None
        if prefill_tokens > 0:
            self.prefill_graphs = PrefillGraphs(
                self.model, self.backend, self.k_caches, self.v_caches, self.req_to_token,
                prefill_tokens, sched.max_num_seqs, arch.hidden_size, config.dtype,
            )  # fmt: skip
            with torch.inference_mode():
                self.prefill_graphs.capture()

    def _graph_max_batch(self, tp: TPGroup) -> int:
        """The largest decode batch to capture; 0 = no graphs (decode or prefill): eager mode,
        not CUDA, a backend that cannot be captured, the Triton interpreter (it copies through
        the host), or tensor parallelism (collectives are not captured yet)."""
        c = self.config
        capturable = getattr(self.backend, "supports_cuda_graphs", False)
        capturable = capturable and os.environ.get("TRITON_INTERPRET", "0") != "1"
        if c.enforce_eager or self.device.type != "cuda" or not capturable or tp.size > 1:
            return 0
        return min(c.cuda_graph_max_batch, c.scheduler.max_num_seqs)

    def _slots_from_free_memory(
        self, kv_heads_local: int, graph_batch: int, prefill_tokens: int
    ) -> int:
        arch = self.config.arch
        with torch.inference_mode():
            prof = profile_kv_bytes(self.config, self.model, self.backend, kv_heads_local,
                                    graph_batch, prefill_tokens)  # fmt: skip
        self.memory_profile = prof
        bytes_per_slot = 2 * arch.num_layers * kv_heads_local * arch.head_dim
        bytes_per_slot *= self.config.kv_cache_dtype.itemsize
        # Never below one full-length request (+ the dummy slot): the engine must run at all.
        return max(int(prof.kv_bytes // bytes_per_slot), self.config.scheduler.max_model_len + 1)

    @torch.inference_mode()
    def execute(self, batch: Batch, keep_logits: bool = False) -> StepResult:
        """Runs one step and waits for its results."""
        return self.launch(batch, keep_logits=keep_logits).result()

    @torch.inference_mode()
    def launch(
        self, batch: Batch, prev: LaunchedStep | None = None, keep_logits: bool = False
    ) -> LaunchedStep:
        """Queues the forward pass and sampling of `batch`; waits for nothing. `prev` is the
        step still running whose sampled ids feed `batch.pending_lanes` (scheduled ahead)."""
        prev_ids = prev.sample.token_ids if prev is not None and prev.sample is not None else None
        logits = self.forward(batch, prev_ids=prev_ids)
        requests = batch.sampling_requests
        if logits is None:
            return LaunchedStep(batch, requests, None, None, None, False)
        kept = logits.float().cpu() if keep_logits else None
        if needs_only_argmax(requests):
            # Greedy, no logprobs/penalties/bans: no sampling tensors, ids only.
            ids = argmax_rows(logits) if self.config.fused_kernels else logits.argmax(dim=-1)
            sample = pack(ids, None, -1)
            history = False
        else:
            inputs = build_sampling_inputs(requests, self.config.arch.vocab_size, self.device)
            sample = self.sampler.sample(logits, inputs)
            history = any(r.params.uses_penalties for r in requests)
        if self.device.type != "cuda":
            return LaunchedStep(batch, requests, sample, sample.packed, None, history, kept)
        host = torch.empty(sample.packed.shape, dtype=torch.int64, pin_memory=True)
        host.copy_(sample.packed, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return LaunchedStep(batch, requests, sample, host, copied, history, kept)

    @torch.inference_mode()
    def forward(
        self, batch: Batch, eager: bool = False, prev_ids: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Runs the model; returns the logits [S, vocab] of the sampling requests (None if no
        request samples). Every tensor-parallel rank calls this with the same batch.
        Decode-only batches within the largest bucket replay a decode CUDA graph, other
        batches within the prefill graphs' buckets a prefill graph, unless `eager`.
        `prev_ids`: int64 [S'] sampled ids of the step before, read at `batch.pending_lanes`
        (rank 0; the other ranks receive what they read from it)."""
        if not eager and self.graphs is not None and self.graphs.can_run(batch):
            return self._forward_graph(batch, prev_ids)
        if not eager and self.prefill_graphs is not None and self.prefill_graphs.can_run(batch):
            return self._forward_prefill_graph(batch, prev_ids)
        return self._forward_eager(batch, prev_ids)

    def _pending_ids(self, prev_rows: torch.Tensor, prev_ids: torch.Tensor | None) -> torch.Tensor:
        """int64 [P]: the input ids of the batch's pending lanes, on every rank."""
        if self.tp.rank == 0:
            assert prev_ids is not None, "pending inputs need the previous step's ids"
            ids = prev_ids.index_select(0, prev_rows)
        else:
            ids = torch.empty(prev_rows.shape, dtype=torch.int64, device=self.device)
        return self.tp.broadcast_from_first(ids)

    def _forward_graph(self, batch: Batch, prev_ids: torch.Tensor | None) -> torch.Tensor:
        pending, _ = self._graph_side_inputs(batch, prev_ids)
        assert self.graphs is not None
        hidden = self.graphs.run(batch, pending)  # [B, hidden]: every request samples, in order
        return self.model.compute_logits(hidden)

    def _forward_prefill_graph(
        self, batch: Batch, prev_ids: torch.Tensor | None
    ) -> torch.Tensor | None:
        pending, (logits_idx,) = self._graph_side_inputs(batch, prev_ids, [batch.logits_indices])
        assert self.prefill_graphs is not None
        hidden = self.prefill_graphs.run(batch, pending)  # [T, hidden]
        if len(batch.sample_indices) == 0:
            return None
        return self.model.compute_logits(hidden[logits_idx])

    def _graph_side_inputs(
        self, batch: Batch, prev_ids: torch.Tensor | None, extra: list[np.ndarray] | None = None
    ) -> tuple[tuple[torch.Tensor | None, torch.Tensor] | None, list[torch.Tensor]]:
        """What a graph replay needs besides its static inputs: applies the ReqToToken entries
        the scheduler wrote without computing them (prefix cache: before attention); returns
        the pending lanes' (lanes, ids) or None, and the `extra` arrays on the device (one
        upload for all)."""
        b, extra = batch, extra or []
        if not (b.table_rows.shape[0] or b.pending_lanes.shape[0] or extra):
            return None, []
        if not (b.table_rows.shape[0] or extra) and self.tp.size == 1 and prev_ids is not None:
            n = b.pending_lanes.shape[0]
            if _is_arange(b.pending_lanes) and _is_arange(b.pending_rows) and n <= len(prev_ids):
                # Steady decode: lane i takes the step before's i-th id; one device copy, no
                # upload and no gather (write_pending with lanes None).
                return (None, prev_ids[:n]), []
        t_rows, t_positions, t_slots, lanes, prev_rows, *uploaded = self.uploader.upload(
            [b.table_rows, b.table_positions, b.table_slots, b.pending_lanes, b.pending_rows,
             *extra]
        )  # fmt: skip
        if b.table_rows.shape[0]:
            write_table(self.req_to_token, t_rows, t_positions, t_slots)
        pending = None
        if b.pending_lanes.shape[0]:
            pending = (lanes, self._pending_ids(prev_rows, prev_ids))
        return pending, uploaded

    def _forward_eager(self, batch: Batch, prev_ids: torch.Tensor | None) -> torch.Tensor | None:
        b = batch
        arrays = [b.input_ids, b.positions, b.out_slots, b.token_rows,
                  b.cu_seqlens_q, b.seq_lens_kv, b.req_rows, b.logits_indices,
                  b.table_rows, b.table_positions, b.table_slots, b.pending_lanes,
                  b.pending_rows]  # fmt: skip
        (input_ids, positions, out_slots, token_rows, cu_q, kv_lens, req_rows, logits_idx,
         t_rows, t_positions, t_slots, lanes, prev_rows) = self.uploader.upload(arrays)  # fmt: skip
        if b.pending_lanes.shape[0]:
            input_ids.index_copy_(0, lanes, self._pending_ids(prev_rows, prev_ids))
        # The scheduler wrote these entries into its host table; mirror them on the device.
        # Cached-prefix entries and new-token entries never share a (row, position).
        if b.table_rows.shape[0]:
            write_table(self.req_to_token, t_rows, t_positions, t_slots)
        write_table(self.req_to_token, token_rows, positions, out_slots)
        meta = AttentionMetadata(
            cu_seqlens_q=cu_q,
            seq_lens_kv=kv_lens,
            req_rows=req_rows,
            req_to_token=self.req_to_token,
            out_slots=out_slots,
            max_q_len=batch.max_q_len,
            max_kv_len=batch.max_kv_len,
            decode_only=batch.decode_only,
            num_decodes=0 if batch.decode_only else batch.num_leading_decodes,
        )
        ctx = ForwardContext(meta, self.backend, self.k_caches, self.v_caches)
        hidden = self.model(input_ids, positions, ctx)
        if len(batch.sample_indices) == 0:
            return None
        # Only the sampling rows go through the LM head.
        return self.model.compute_logits(hidden[logits_idx])


def _is_arange(a: np.ndarray) -> bool:
    """Whether int array `a` is 0, 1, ..., len(a) - 1."""
    return bool(a.shape[0]) and a[0] == 0 and a[-1] == a.shape[0] - 1 and bool(
        (np.diff(a) == 1).all()
    )


def _step_result(out: SamplerOutput, requests: list) -> StepResult:
    token_ids = out.token_ids.tolist()
    if out.logprobs is None:
        return StepResult(token_ids, None)
    chosen = out.logprobs.tolist()
    top_ids = out.top_token_ids.tolist() if out.top_token_ids is not None else None
    top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
    logprobs: list[TokenLogprobs | None] = []
    for i, req in enumerate(requests):
        n = req.params.logprobs
        if n is None:
            logprobs.append(None)
            continue
        top = list(zip(top_ids[i][:n], top_lps[i][:n])) if top_ids and top_lps else []
        logprobs.append((chosen[i], top))
    return StepResult(token_ids, logprobs)
