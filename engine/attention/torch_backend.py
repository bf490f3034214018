"""Pure-torch attention over the token-level KV pool: gathers each request's K/V through the
ReqToToken table into a padded [B, L] view and runs SDPA. Slow but simple: the reference the
Triton backend is checked against, and the CPU default."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raylight.engine.attention.backend import AttentionMetadata
from raylight.kernels.kv_store import store_rows


class TorchAttentionBackend:
    def fuses_rope(self, head_dim: int) -> bool:
        return False  # rotary and the store stay separate ops (layers/attention.py)

    def decode_with_rope(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise NotImplementedError("the torch backend does not fuse rotary into attention")

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> None:
        store_rows(k_cache, meta.out_slots, k)
        store_rows(v_cache, meta.out_slots, v)

    def forward(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        lq, lk = meta.max_q_len, meta.max_kv_len
        dev = q.device
        q_start = meta.cu_seqlens_q[:-1].long()
        q_len = meta.cu_seqlens_q[1:].long() - q_start  # [B]
        kv_len = meta.seq_lens_kv.long()  # [B]

        j = torch.arange(lq, device=dev)
        q_valid = j[None, :] < q_len[:, None]  # [B, Lq]
        q_index = (q_start[:, None] + j[None, :]).clamp(max=q.shape[0] - 1)
        qp = q[q_index]  # [B, Lq, H, D]

        slots = meta.req_to_token[meta.req_rows][:, :lk].long()  # [B, Lk]
        kp = k_cache[slots]  # [B, Lk, Hk, D]
        vp = v_cache[slots]

        q_pos = kv_len[:, None] - q_len[:, None] + j[None, :]  # [B, Lq]
        k_pos = torch.arange(lk, device=dev)
        # Padded query rows get q_pos >= kv_len, so they see every real key: never an empty row.
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (
            k_pos[None, None, :] < kv_len[:, None, None]
        )  # [B, Lq, Lk]
        out = F.scaled_dot_product_attention(
            qp.transpose(1, 2),
            kp.transpose(1, 2).to(q.dtype),
            vp.transpose(1, 2).to(q.dtype),
            attn_mask=mask[:, None],
            scale=scale,
            enable_gqa=True,
        )  # [B, H, Lq, D]
        return out.transpose(1, 2)[q_valid]  # [T, H, D]
