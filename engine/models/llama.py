"""Llama-family decoder: Llama 2/3, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

The variants are flags of `ModelArchConfig`; tensor parallelism lives in the layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from raylight.engine.errors import ModelDirectoryError
from raylight.engine.layers.activation import SiluAndMul
from raylight.engine.layers.attention import Attention, ForwardContext
from raylight.engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from raylight.engine.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    fused_linear,
    fused_linear_fits,
)
from raylight.engine.layers.norm import RMSNorm
from raylight.engine.layers.rotary import RotaryEmbedding
from raylight.engine.model_config import ModelArchConfig
from raylight.engine.parallel import TPGroup


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelArchConfig, layer_idx: int, tp: TPGroup, dtype: torch.dtype):
        super().__init__()
        d = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, d, cfg.num_heads, cfg.num_kv_heads, cfg.qkv_bias, tp, dtype
        )
        self.o_proj = RowParallelLinear(cfg.num_heads * d, cfg.hidden_size, cfg.o_bias, tp, dtype)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.attn = Attention(layer_idx, d)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding, ctx: ForwardContext
    ) -> torch.Tensor:
        return self.o_proj(self.attend(self.qkv_proj(x), positions, rope, ctx))

    def attend(
        self, qkv: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        """The projected [T, q + k + v] -> attention output [T, H * D], before o_proj."""
        q, k, v = self.qkv_proj.split(qkv)  # q: [T, H, D]; k, v: [T, Hk, D]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm.norm(q), self.k_norm.norm(k)
        return self.attn(q, k, v, positions, rope, ctx)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelArchConfig, tp: TPGroup, dtype: torch.dtype):
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(
            cfg.hidden_size, [inter, inter], cfg.mlp_bias, tp, dtype
        )
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, cfg.mlp_bias, tp, dtype)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, layer_idx: int, tp: TPGroup, dtype: torch.dtype):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, tp, dtype)
        self.mlp = LlamaMLP(cfg, tp, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, positions, rope, ctx)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual

    def forward_fused(
        self, stream: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        """`forward` for a few rows with the fused small-batch kernels (engine option
        fuse_decode_layers): `stream` [T, hidden] is the residual stream (x + residual), updated
        in place and returned. Four linear launches and no separate norm or SiLU: each norm is
        the prologue of the projection after it, each residual add the epilogue of o_proj and
        down_proj, SiLU-and-mul the epilogue of gate_up."""
        attn, mlp = self.self_attn, self.mlp
        qkv, o, gate_up, down = attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj
        h = fused_linear(stream, qkv.weight, qkv.bias, qkv.pdl, norm=self.input_layernorm)
        h = attn.attend(h, positions, rope, ctx)
        fused_linear(h, o.weight, o.bias, o.pdl, residual=stream)
        h = fused_linear(stream, gate_up.weight, gate_up.bias, gate_up.pdl,
                         norm=self.post_attention_layernorm, gated=True)  # fmt: skip
        fused_linear(h, down.weight, down.bias, down.pdl, residual=stream)
        return stream


class LlamaForCausalLM(nn.Module):
    # Set by layers.fused.use_fused_kernels (fuse_decode_layers): steps of at most
    # fused_decode_max_rows rows run forward_fused.
    fused_decode: bool = False
    fused_decode_max_rows: int = 0

    def __init__(self, cfg: ModelArchConfig, tp: TPGroup, dtype: torch.dtype, max_positions: int):
        super().__init__()
        self.cfg = cfg
        self.tp_size = tp.size
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp, dtype)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, tp, dtype) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp, dtype)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope, max_positions)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden states [T, hidden]
        x = self.embed_tokens(input_ids)
        if (self.fused_decode and x.shape[0] <= self.fused_decode_max_rows
                and self.tp_size == 1 and fused_linear_fits(x, self.norm.weight)):  # fmt: skip
            for layer in self.layers:
                x = layer.forward_fused(x, positions, self.rope, ctx)
            return self.norm(x)[0]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, self.rope, ctx)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads HF tensor names into the fused, sharded parameters; every parameter must be
        covered exactly once (errors name the missing or unknown tensors)."""
        loaders = self._loaders()
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if name not in loaders:
                raise ModelDirectoryError(f"unexpected tensor {name!r} for {self.cfg.architecture}")
            loaders[name](name, tensor)
            loaded.add(name)
        missing = sorted(set(loaders) - loaded - self._optional_names())
        if missing:
            raise ModelDirectoryError(f"missing tensors: {', '.join(missing[:8])}")

    def _optional_names(self) -> set[str]:
        return {"lm_head.weight"} if self.cfg.tie_word_embeddings else set()

    def _loaders(self) -> dict:
        table: dict = {"model.embed_tokens.weight": self.embed_tokens.load_shard}
        table["model.norm.weight"] = self.norm.load_shard
        if not self.cfg.tie_word_embeddings:
            table["lm_head.weight"] = self.lm_head.load_shard
        else:
            table["lm_head.weight"] = lambda name, t: None  # some tied checkpoints still ship it
        suffixes = ["weight"] + (["bias"] if self.cfg.qkv_bias else [])
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            for which in "qkv":
                for s in suffixes:
                    table[f"{p}self_attn.{which}_proj.{s}"] = _bind_qkv(attn.qkv_proj, which)
            for s in ["weight"] + (["bias"] if self.cfg.o_bias else []):
                table[f"{p}self_attn.o_proj.{s}"] = attn.o_proj.load_shard
            if attn.q_norm is not None and attn.k_norm is not None:
                table[f"{p}self_attn.q_norm.weight"] = attn.q_norm.load_shard
                table[f"{p}self_attn.k_norm.weight"] = attn.k_norm.load_shard
            for s in ["weight"] + (["bias"] if self.cfg.mlp_bias else []):
                table[f"{p}mlp.gate_proj.{s}"] = _bind_shard(mlp.gate_up_proj, 0)
                table[f"{p}mlp.up_proj.{s}"] = _bind_shard(mlp.gate_up_proj, 1)
                table[f"{p}mlp.down_proj.{s}"] = mlp.down_proj.load_shard
            table[f"{p}input_layernorm.weight"] = layer.input_layernorm.load_shard
            table[f"{p}post_attention_layernorm.weight"] = layer.post_attention_layernorm.load_shard
        return table


def _bind_qkv(layer: QKVParallelLinear, which: str):
    return lambda name, t: layer.load_qkv(name, t, which)


def _bind_shard(layer: ColumnParallelLinear, shard: int):
    return lambda name, t: layer.load_shard(name, t, shard)
