"""The attention layer: rotary on q and k, this step's K/V into the pool, then attention through
the backend. With the fused kernels (rope.fused) the first two are one Triton kernel
(kernels/rope_kv_store.py), and in decode-only steps of a backend that fuses them (Triton,
engine option fuse_decode_attention) all three are one (kernels/decode_rope_attention.py); the
pool layout is the same for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raylight.engine.attention.backend import AttentionBackend, AttentionMetadata
from raylight.engine.layers.rotary import RotaryEmbedding
from raylight.kernels.rope_kv_store import rope_kv_store


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
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        # q: [T, H, D]; k, v: [T, Hk, D] (before rotary); positions: [T] -> [T, H * D]
        k_cache = ctx.k_caches[self.layer_idx]
        v_cache = ctx.v_caches[self.layer_idx]
        contiguous = q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        if rope.fused and contiguous and q.dtype == k.dtype == v.dtype:
            if ctx.attn.decode_only and ctx.backend.fuses_rope(q.shape[-1]):
                out = ctx.backend.decode_with_rope(positions, q, k, v, rope.cos, rope.sin,
                                                   k_cache, v_cache, ctx.attn, self.scale)
                return out.reshape(out.shape[0], -1)
            q = rope_kv_store(positions, q, k, v, rope.cos, rope.sin, k_cache, v_cache,
                              ctx.attn.out_slots, pdl=rope.pdl)  # fmt: skip
        else:
            q, k = rope(positions, q, k)
            ctx.backend.store_kv(k, v, k_cache, v_cache, ctx.attn)
        out = ctx.backend.forward(q, k_cache, v_cache, ctx.attn, self.scale)
        return out.reshape(out.shape[0], -1)
