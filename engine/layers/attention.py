"""The attention layer: stores this step's K/V into the pool, then attends through the backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raylight.engine.attention.backend import AttentionBackend, AttentionMetadata


@dataclass(slots=True)
class ForwardContext:
    """Everything a forward pass needs besides token ids and positions, passed explicitly."""

    attn: AttentionMetadata
    backend: AttentionBackend
    k_caches: list[torch.Tensor]  # per layer: [slots, kv_heads_local, head_dim]
    v_caches: list[torch.Tensor]


class Attention(nn.Module):
    def __init__(self, layer_idx: int, head_dim: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.scale = head_dim**-0.5

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        # q: [T, H, D]; k, v: [T, Hk, D] -> [T, H * D]
        k_cache = ctx.k_caches[self.layer_idx]
        v_cache = ctx.v_caches[self.layer_idx]
        ctx.backend.store_kv(k, v, k_cache, v_cache, ctx.attn)
        out = ctx.backend.forward(q, k_cache, v_cache, ctx.attn, self.scale)
        return out.reshape(out.shape[0], -1)
