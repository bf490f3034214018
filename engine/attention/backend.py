"""The attention backend interface: what every implementation (torch, Triton) receives.

Invariants of `AttentionMetadata`, for a batch of B requests and T new tokens:
- new tokens are concatenated request by request; request b owns q rows
  `cu_seqlens_q[b] : cu_seqlens_q[b + 1]`;
- `seq_lens_kv[b]` counts all of request b's tokens whose K/V exist after this step's store
  (cached + new), and its new tokens are the last ones: the i-th new token sits at position
  `seq_lens_kv[b] - q_len[b] + i` and attends to positions `<= ` its own;
- `req_to_token[req_rows[b], p]` is the KV slot of position p of request b (already written for
  the new tokens before the forward starts); `out_slots[t]` is the slot token t writes its K/V to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(slots=True)
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor  # int64 [B + 1], device
    seq_lens_kv: torch.Tensor  # int64 [B], device
    req_rows: torch.Tensor  # int64 [B], device
    req_to_token: torch.Tensor  # int32 [rows, max_model_len], device
    out_slots: torch.Tensor  # int64 [T], device
    max_q_len: int
    max_kv_len: int
    decode_only: bool  # every request has exactly one new token
    # In a mixed batch, the first num_decodes requests have one new token each (the scheduler
    # puts them first) and may take the decode kernel; 0: the whole batch takes the prefill path.
    # (In a prefill graph some of them are empty lanes: q_len 0, seq_len 0, their q row owned by
    # a later request; engine/prefill_graphs.py.)
    num_decodes: int = 0


class AttentionBackend(Protocol):
    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        """Writes k, v [T, kv_heads, D] into the caches [slots, kv_heads, D] at meta.out_slots."""
        ...

    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """q: [T, heads, D] -> out [T, heads, D], causal over each request's cached + new K/V."""
        ...

    def fuses_rope(self, head_dim: int) -> bool:
        """Whether decode-only steps hand the unrotated q, k, v to `decode_with_rope` (rotary,
        the KV store and attention in one call) instead of store_kv + forward."""
        ...

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
        """Only where fuses_rope: q [B, heads, D], k, v [B, kv_heads, D] before rotary ->
        [B, heads, D], the rotated k and v stored at meta.out_slots."""
        ...
