"""Attention over the token-level KV pool with the Triton kernels of `raylight.kernels`.

- store_kv: one scatter kernel for K and V (`kv_store`); slot 0 may repeat (padded lanes).
- decode-only batches: split-K `decode_attention`; with `fuse_decode_rope` (engine option
  fuse_decode_attention) the attention layer hands the unrotated q, k, v to
  `decode_with_rope` instead, one launch for rotary, KV store, splits and merge
  (`decode_rope_attention`; power-of-two head_dim). The split count is a pure function of
  (batch, kv_heads, meta.max_kv_len, SM count), all Python ints, so a CUDA graph captured with
  `max_kv_len = max_model_len` stays correct for every real length <= max_model_len.
- any batch with a prefill chunk: `prefill_attention`, which reads cached prefixes and earlier
  chunks through req_to_token. In a mixed batch the leading `meta.num_decodes` one-token
  requests take `decode_attention` instead (the prefill kernel would spend a whole
  BLOCK_M-row tile of dot products on each of their single rows, over their whole context);
  decode first, so that a prefill graph's empty decode lanes (engine/prefill_graphs.py) write
  their zero rows before the prefill kernel writes those rows. With num_decodes 0 every row
  takes the prefill kernel (one-token requests as q_len = 1 requests).

On CPU the kernels run in the Triton interpreter (TRITON_INTERPRET=1): slow, for tests only.
"""

from __future__ import annotations

import torch

from raylight.engine.attention.backend import AttentionMetadata
from raylight.kernels.decode_attention import decode_attention
from raylight.kernels.decode_rope_attention import decode_rope_attention, supports_head_dim
from raylight.kernels.kv_store import store_kv
from raylight.kernels.prefill_attention import prefill_attention


class TritonAttentionBackend:
    # Decode steps launch a fixed grid from Python ints and allocate only through torch:
    # safe to capture in a CUDA graph.
    supports_cuda_graphs = True

    def __init__(self, pdl: bool = False, fuse_decode_rope: bool = False) -> None:
        self.pdl = pdl  # decode kernels with programmatic dependent launch (kernels/_common.py)
        self.fuse_decode_rope = fuse_decode_rope
        # decode_with_rope's split counters: zero between launches (each launch resets its own),
        # grown outside CUDA-graph capture (a graph's eager warm-up runs first).
        self._counters: torch.Tensor | None = None

    def fuses_rope(self, head_dim: int) -> bool:
        """Whether decode-only steps should call `decode_with_rope` (unrotated q, k, v)."""
        return self.fuse_decode_rope and supports_head_dim(head_dim)

    def decode_with_rope(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """A decode-only step's rotary, KV store and attention: q [B, heads, D], k, v
        [B, kv_heads, D] before rotary -> [B, heads, D]."""
        return decode_rope_attention(
            positions, q, k, v, cos, sin, k_cache, v_cache, meta.out_slots, meta.req_to_token,
            meta.req_rows, meta.seq_lens_kv, max(1, meta.max_kv_len), scale,
            counters=self._split_counters(q.shape[0] * k_cache.shape[1], q.device),
            pdl=self.pdl,
        )  # fmt: skip

    def _split_counters(self, needed: int, device: torch.device) -> torch.Tensor:
        c = self._counters
        if c is None or c.numel() < needed or c.device != device:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("decode_with_rope: run a step eagerly before capturing it")
            self._counters = c = torch.zeros(max(needed, 4096), dtype=torch.int32, device=device)
        return c

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        # k, v: [T, kv_heads, D] -> caches [slots, kv_heads, D] at meta.out_slots [T]
        store_kv(k, v, k_cache, v_cache, meta.out_slots)

    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        # q: [T, heads, D] -> [T, heads, D]
        if meta.decode_only:
            # One query per request: q's token dim is the batch dim.
            return decode_attention(
                q, k_cache, v_cache, meta.req_to_token, meta.req_rows, meta.seq_lens_kv,
                max(1, meta.max_kv_len), scale, pdl=self.pdl,
            )  # fmt: skip
        d = meta.num_decodes
        if d <= 0 or d >= meta.req_rows.shape[0]:
            return prefill_attention(
                q, k_cache, v_cache, meta.req_to_token, meta.req_rows, meta.cu_seqlens_q,
                meta.seq_lens_kv, meta.max_q_len, scale,
            )  # fmt: skip
        # Decode rows are q rows 0..d-1 (request b's one token is row b); the prefill requests'
        # cu_seqlens entries keep indexing the whole q, so both kernels write into one output.
        out = torch.empty_like(q)
        decode_attention(
            q[:d], k_cache, v_cache, meta.req_to_token, meta.req_rows[:d], meta.seq_lens_kv[:d],
            max(1, meta.max_kv_len), scale, out=out[:d], pdl=self.pdl,
        )  # fmt: skip
        rows, cu, lens = meta.req_rows[d:], meta.cu_seqlens_q[d:], meta.seq_lens_kv[d:]
        if d % 2:  # views at odd int64 offsets would compile a second kernel variant (Triton
            # specializes on 16-byte pointer alignment; engine/host_to_device.py): copies
            rows, cu, lens = rows.clone(), cu.clone(), lens.clone()
        return prefill_attention(
            q, k_cache, v_cache, meta.req_to_token, rows, cu, lens, meta.max_q_len, scale,
            out=out,
        )  # fmt: skip
