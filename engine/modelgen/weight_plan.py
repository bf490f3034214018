"""The list of tensors (HF names, shapes, initial distributions) and its split into shards.

Planned before anything is generated, so the shard count in the file names
(`model-00001-of-0000N.safetensors`) is known up front and large presets can be checked
without allocating them. Pure data, no torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from raylight.engine.modelgen.archs import ArchSpec
from raylight.engine.modelgen.presets import ModelShape

# Target std of the final logits. Large enough that greedy decoding rarely sees a near-tie
# (top-2 gaps are ~1 logit), small enough that sampling at temperature 1 stays varied.
LOGIT_STD = 4.0


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One weight. `dist == "normal"`: N(a, b**2); `dist == "uniform"`: U(a, b)."""

    name: str
    shape: tuple[int, ...]
    dist: Literal["normal", "uniform"]
    a: float
    b: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _linear(name: str, out_features: int, in_features: int, gain: float = 1.0) -> TensorSpec:
    # std 1/sqrt(fan_in) keeps activations at unit scale through every projection.
    return TensorSpec(name, (out_features, in_features), "normal", 0.0, gain / in_features**0.5)


def _norm(name: str, size: int) -> TensorSpec:
    return TensorSpec(name, (size,), "uniform", 0.8, 1.2)


def _bias(name: str, size: int) -> TensorSpec:
    return TensorSpec(name, (size,), "normal", 0.0, 0.1)


def _layer(arch: ArchSpec, s: ModelShape, i: int) -> list[TensorSpec]:
    p = f"model.layers.{i}."
    h, hd = s.hidden_size, s.head_dim
    q_out, kv_out = s.num_attention_heads * hd, s.num_key_value_heads * hd
    specs = [
        _norm(p + "input_layernorm.weight", h),
        _linear(p + "self_attn.q_proj.weight", q_out, h),
        _linear(p + "self_attn.k_proj.weight", kv_out, h),
        _linear(p + "self_attn.v_proj.weight", kv_out, h),
    ]
    if arch.qkv_bias:
        specs += [_bias(p + f"self_attn.{x}_proj.bias", n)
                  for x, n in (("q", q_out), ("k", kv_out), ("v", kv_out))]
    if arch.qk_norm:
        specs += [_norm(p + f"self_attn.{x}_norm.weight", hd) for x in ("q", "k")]
    return specs + [
        _linear(p + "self_attn.o_proj.weight", h, q_out),
        _norm(p + "post_attention_layernorm.weight", h),
        _linear(p + "mlp.gate_proj.weight", s.intermediate_size, h),
        _linear(p + "mlp.up_proj.weight", s.intermediate_size, h),
        _linear(p + "mlp.down_proj.weight", h, s.intermediate_size),
    ]


def plan_tensors(arch: ArchSpec, shape: ModelShape) -> tuple[TensorSpec, ...]:
    """All weights in HF naming, in the order they are generated and written."""
    # The final RMSNorm output has norm ~sqrt(hidden); lm_head std LOGIT_STD/sqrt(hidden) then
    # gives logits of std ~LOGIT_STD. A tied lm_head reuses N(0, 1) embeddings (std ~sqrt(h)).
    specs = [TensorSpec("model.embed_tokens.weight", (shape.vocab_size, shape.hidden_size),
                        "normal", 0.0, 1.0)]
    for i in range(shape.num_hidden_layers):
        specs += _layer(arch, shape, i)
    specs.append(_norm("model.norm.weight", shape.hidden_size))
    if not shape.tie_word_embeddings:
        specs.append(_linear("lm_head.weight", shape.vocab_size, shape.hidden_size, LOGIT_STD))
    return tuple(specs)


def num_params(plan: tuple[TensorSpec, ...]) -> int:
    return sum(spec.numel for spec in plan)


def assign_shards(
    plan: tuple[TensorSpec, ...], itemsize: int, max_shard_bytes: int
) -> tuple[tuple[TensorSpec, ...], ...]:
    """Split `plan` in order into shards of at most `max_shard_bytes` each; a tensor larger
    than the limit gets a shard of its own (as HF's save_pretrained does)."""
    shards: list[list[TensorSpec]] = [[]]
    used = 0
    for spec in plan:
        nbytes = spec.numel * itemsize
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += nbytes
    return tuple(tuple(shard) for shard in shards)


def shard_file_names(num_shards: int) -> tuple[str, ...]:
    if num_shards == 1:
        return ("model.safetensors",)
    return tuple(
        f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)
    )
