"""How many KV slots fit on a GPU: measured, not guessed.

After the weights are loaded, the runner runs (1) the largest prefill step the scheduler can
build (max_num_batched_tokens tokens, LM head and top-p sampling on max_num_seqs rows),
(2) an eager decode step at the largest CUDA-graph bucket and (3) the forward pass of the
largest prefill graph (engine/prefill_graphs.py), each on a throwaway 1-token-per-slot KV pool,
and records the peak memory each allocates. The pool then gets

    total * gpu_memory_utilization - memory in use now - prefill peak - graph reserve

where the graph reserve (only with CUDA graphs) is the decode and prefill-graph peaks plus the
graphs' outputs and a fixed margin per pool: graphs keep their own memory pools, which the
eager steps cannot reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raylight.engine.attention.backend import AttentionBackend, AttentionMetadata
from raylight.engine.config import EngineConfig
from raylight.engine.cuda_graphs import bucket_sizes
from raylight.engine.layers.attention import ForwardContext
from raylight.engine.sampler import Sampler
from raylight.engine.sampling_inputs import SamplingInputs

_GRAPH_MARGIN = 256 << 20  # cuBLAS workspaces of the capture stream, allocator rounding


@dataclass(frozen=True, slots=True)
class MemoryProfile:
    prefill_peak_bytes: int
    graph_reserve_bytes: int  # 0 without CUDA graphs
    kv_bytes: int  # what the KV pool may use (can be <= 0: the caller decides)


def profile_kv_bytes(
    config: EngineConfig,
    model: nn.Module,
    backend: AttentionBackend,
    kv_heads_local: int,
    graph_max_batch: int,
    prefill_graph_tokens: int = 0,
) -> MemoryProfile:
    """Runs the profile steps on `config.device` (CUDA); graph_max_batch 0 means no decode
    graphs, prefill_graph_tokens 0 no prefill graphs."""
    device = config.device
    sched = config.scheduler
    tokens = min(sched.max_num_batched_tokens, sched.max_num_seqs * sched.max_model_len)
    prefill = _peak_bytes(device, lambda: _prefill_step(config, model, backend, kv_heads_local,
                                                        tokens))  # fmt: skip
    reserve = 0
    if graph_max_batch > 0:
        decode = _peak_bytes(device, lambda: _decode_step(config, model, backend, kv_heads_local,
                                                          graph_max_batch))  # fmt: skip
        rows = sum(bucket_sizes(graph_max_batch))
        outputs = rows * config.arch.hidden_size * config.dtype.itemsize
        reserve = decode + outputs + _GRAPH_MARGIN
    if prefill_graph_tokens > 0:
        graphed = _peak_bytes(device, lambda: _forward_only(config, model, backend,
                                                            kv_heads_local, prefill_graph_tokens))
        outputs = prefill_graph_tokens * config.arch.hidden_size * config.dtype.itemsize
        reserve += graphed + outputs + _GRAPH_MARGIN
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    budget = total * config.gpu_memory_utilization - (total - free)
    return MemoryProfile(prefill, reserve, int(budget - prefill - reserve))


def _peak_bytes(device: torch.device, step) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def _scratch_ctx(
    config: EngineConfig,
    backend: AttentionBackend,
    kv_heads_local: int,
    seq_lens: list[int],
) -> tuple[ForwardContext, torch.Tensor]:
    """A throwaway pool with one slot per token (+ dummy slot 0) and a table mapping request b's
    positions to consecutive slots. Returns the context and the new tokens' positions [T]."""
    dev, arch = config.device, config.arch
    lens = torch.tensor(seq_lens, dtype=torch.int64, device=dev)  # [B]
    total = int(sum(seq_lens))
    shape = (total + 1, kv_heads_local, arch.head_dim)
    kv_dtype = config.kv_cache_dtype
    k_caches = [torch.zeros(shape, dtype=kv_dtype, device=dev) for _ in range(arch.num_layers)]
    v_caches = [torch.zeros_like(k) for k in k_caches]
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int64, device=dev)
    cu[1:] = lens.cumsum(0)
    width = max(seq_lens)
    pos = torch.arange(width, dtype=torch.int64, device=dev)
    table = (1 + cu[:-1, None] + pos[None, :]).clamp(max=total).to(torch.int32)  # [B, width]
    tokens_pos = torch.cat([torch.arange(n, device=dev) for n in seq_lens])  # [T]
    meta = AttentionMetadata(
        cu_seqlens_q=cu, seq_lens_kv=lens,
        req_rows=torch.arange(len(seq_lens), dtype=torch.int64, device=dev),
        req_to_token=table.contiguous(),
        out_slots=torch.arange(1, total + 1, dtype=torch.int64, device=dev),
        max_q_len=width, max_kv_len=width, decode_only=width == 1,
    )  # fmt: skip
    return ForwardContext(meta, backend, k_caches, v_caches), tokens_pos


def _prefill_step(
    config: EngineConfig, model: nn.Module, backend: AttentionBackend, kv_heads: int, tokens: int
) -> None:
    sched = config.scheduler
    n_req = -(-tokens // sched.max_model_len)
    lens = [tokens // n_req + (i < tokens % n_req) for i in range(n_req)]
    ctx, positions = _scratch_ctx(config, backend, kv_heads, lens)
    ids = torch.zeros(tokens, dtype=torch.int64, device=config.device)
    hidden = model(ids, positions, ctx)
    rows = min(sched.max_num_seqs, tokens)
    logits = model.compute_logits(hidden[-rows:])
    Sampler()(logits, _top_p_inputs(rows, config.device))


def _forward_only(
    config: EngineConfig, model: nn.Module, backend: AttentionBackend, kv_heads: int, tokens: int
) -> None:
    """One request of `tokens` tokens up to the final norm: what the largest prefill graph
    runs (its LM head runs outside the graph, within the eager prefill peak)."""
    ctx, positions = _scratch_ctx(config, backend, kv_heads, [tokens])
    ids = torch.zeros(tokens, dtype=torch.int64, device=config.device)
    model(ids, positions, ctx)


def _decode_step(
    config: EngineConfig, model: nn.Module, backend: AttentionBackend, kv_heads: int, batch: int
) -> None:
    ctx, positions = _scratch_ctx(config, backend, kv_heads, [1] * batch)
    # The graphs' split count comes from max_model_len: profile with it.
    ctx.attn.max_kv_len = config.scheduler.max_model_len
    ids = torch.zeros(batch, dtype=torch.int64, device=config.device)
    model(ids, positions, ctx)


def _top_p_inputs(rows: int, device: torch.device) -> SamplingInputs:
    """Sampling inputs that take the sampler's most memory-hungry path (a full sort)."""
    ones = torch.ones(rows, dtype=torch.float32, device=device)
    ints = torch.zeros(rows, dtype=torch.int64, device=device)
    return SamplingInputs(
        temperature=ones, top_k=None, top_p=ones * 0.9, min_p=None, seeds=ints, counters=ints,
        repetition_penalty=None, presence_penalty=None, frequency_penalty=None,
        prompt_token_mask=None, output_token_counts=None, banned_tokens=None,
        max_num_logprobs=-1, all_greedy=False,
    )  # fmt: skip
