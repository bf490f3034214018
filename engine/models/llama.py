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
from raylight.kernels.decode_mlp import ENGINE_MAX_ROWS as DECODE_MLP_MAX_ROWS
from raylight.kernels.decode_mlp import decode_layer_tail, decode_mlp


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
    one_kernel: bool = False  # set by layers.fused.use_fused_kernels (decode_mlp_kernel)

    def __init__(self, cfg: ModelArchConfig, tp: TPGroup, dtype: torch.dtype):
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(
            cfg.hidden_size, [inter, inter], cfg.mlp_bias, tp, dtype
        )
        self.down_proj = RowParallelLinear(inter, cfg.hidden_size, cfg.mlp_bias, tp, dtype)
        self.act = SiluAndMul()
        self.tp_size = tp.size
        self.has_bias = cfg.mlp_bias
        # The one-kernel path's grid barrier state (kernels/decode_mlp.py), one per layer.
        self.register_buffer("barrier", torch.zeros(2, dtype=torch.int32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))

    def one_kernel_fits(self, h: torch.Tensor) -> bool:
        """Whether `forward_one_kernel` takes these rows: the option on, one rank (down_proj's
        all-reduce would sit inside the kernel), no bias, a decode batch of the rows where the
        kernel wins (kernels/decode_mlp.py ENGINE_MAX_ROWS)."""
        return (
            self.one_kernel and self.tp_size == 1 and not self.has_bias and h.dim() == 2
            and 1 <= h.shape[0] <= DECODE_MLP_MAX_ROWS and h.stride(-1) == 1
            and h.dtype == self.down_proj.weight.dtype
        )  # fmt: skip

    def forward_one_kernel(
        self, h: torch.Tensor, residual: torch.Tensor, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """norm(h + residual) then this MLP, as one kernel (kernels/decode_mlp.py): returns
        (the MLP's output, h + residual), as `norm` and `forward` would. A device on which the
        kernel's grid cannot be resident at once refuses the cooperative launch; the MLP then
        turns the path off and runs its layers."""
        try:
            return decode_mlp(h, residual, norm.weight, norm.eps, self.gate_up_proj.weight,
                              self.down_proj.weight, self.barrier)  # fmt: skip
        except RuntimeError as exc:
            if "cooperative" not in str(exc):
                raise
            self.one_kernel = False
            h, residual = norm(h, residual)
            return self.forward(h), residual


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
        if self.mlp.one_kernel_fits(h):
            return self.mlp.forward_one_kernel(h, residual, self.post_attention_layernorm)
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
    fused_decode: bool = False  # set by layers.fused.use_fused_kernels (fuse_decode_layers)
    one_kernel_tail: bool = False  # set by layers.fused.use_fused_kernels (decode_tail_kernel)

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
        # The one-kernel layer tail takes plain Llama layers only: no biases, no q/k norms.
        self.tail_kernel_fits_arch = not (cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias
                                          or cfg.qk_norm)  # fmt: skip

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden states [T, hidden]
        x = self.embed_tokens(input_ids)
        if self.one_kernel_tail and self._tail_fits(x):
            try:
                return self._forward_tail(x, positions, ctx)
            except RuntimeError as exc:  # a grid that cannot be resident: the layers' kernels
                if "cooperative" not in str(exc):
                    raise
                self.one_kernel_tail = False  # (re-running rewrites the same K/V slots)
        if self.fused_decode and self.tp_size == 1 and fused_linear_fits(x, self.norm.weight):
            for layer in self.layers:
                x = layer.forward_fused(x, positions, self.rope, ctx)
            return self.norm(x)[0]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, self.rope, ctx)
        return self.norm(x, residual)[0]

    def _tail_fits(self, x: torch.Tensor) -> bool:
        return (
            self.tp_size == 1 and self.tail_kernel_fits_arch and x.dim() == 2
            and 1 <= x.shape[0] <= DECODE_MLP_MAX_ROWS and x.dtype == self.norm.weight.dtype
        )  # fmt: skip

    def _forward_tail(
        self, x: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """`forward` with each layer after its attention as one kernel (engine option
        decode_tail_kernel, kernels/decode_mlp.py decode_layer_tail): o_proj, the post-attention
        norm, the MLP, and the next layer's input norm and qkv projection. Per layer, that
        kernel, rotary + KV store, and the two decode attention stages are left."""
        first = self.layers[0]
        h, residual = first.input_layernorm(x, None)
        qkv = first.self_attn.qkv_proj(h)
        out = qkv
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn.attend(qkv, positions, self.rope, ctx)
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            norm, mlp = layer.post_attention_layernorm, layer.mlp
            following = {} if nxt is None else dict(
                next_norm_weight=nxt.input_layernorm.weight, next_eps=nxt.input_layernorm.eps,
                next_qkv_weight=nxt.self_attn.qkv_proj.weight)  # fmt: skip
            out, residual = decode_layer_tail(
                attn, residual, layer.self_attn.o_proj.weight, norm.weight, norm.eps,
                mlp.gate_up_proj.weight, mlp.down_proj.weight, mlp.barrier, **following)
            qkv = out
        return self.norm(out, residual)[0]

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
