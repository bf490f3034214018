"""What distinguishes the supported HF architectures, and their config.json.

Pure data, no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from raylight.engine.modelgen.presets import ModelShape


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """One HF decoder architecture. All share the Llama tensor names; these flags add to them."""

    name: str
    hf_class: str
    model_type: str
    qkv_bias: bool  # q/k/v projections carry biases (Qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k, weight shape [head_dim] (Qwen3)
    llama3_rope: bool  # keeps the preset's llama3 rope scaling; other archs drop it
    tokenizer_style: str  # "llama3" or "chatml"
    extra_config: MappingProxyType[str, Any]


ARCHS: MappingProxyType[str, ArchSpec] = MappingProxyType({
    "llama": ArchSpec(
        name="llama", hf_class="LlamaForCausalLM", model_type="llama", qkv_bias=False,
        qk_norm=False, llama3_rope=True, tokenizer_style="llama3",
        extra_config=MappingProxyType(
            {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}
        ),
    ),
    "mistral": ArchSpec(
        name="mistral", hf_class="MistralForCausalLM", model_type="mistral", qkv_bias=False,
        qk_norm=False, llama3_rope=False, tokenizer_style="llama3",
        extra_config=MappingProxyType({"sliding_window": None}),
    ),
    "qwen2": ArchSpec(
        name="qwen2", hf_class="Qwen2ForCausalLM", model_type="qwen2", qkv_bias=True,
        qk_norm=False, llama3_rope=False, tokenizer_style="chatml",
        extra_config=MappingProxyType({"use_sliding_window": False, "sliding_window": None}),
    ),
    "qwen3": ArchSpec(
        name="qwen3", hf_class="Qwen3ForCausalLM", model_type="qwen3", qkv_bias=False,
        qk_norm=True, llama3_rope=False, tokenizer_style="chatml",
        extra_config=MappingProxyType(
            {"attention_bias": False, "use_sliding_window": False, "sliding_window": None}
        ),
    ),
})


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; choose from {sorted(ARCHS)}") from None


def hf_config(
    arch: ArchSpec,
    shape: ModelShape,
    dtype: str,
    bos_token_id: int,
    eos_token_ids: list[int],
    transformers_version: str | None = None,
) -> dict[str, Any]:
    """config.json contents, with the legacy `rope_theta`/`rope_scaling` keys real checkpoints
    carry (transformers 5 folds them into `rope_parameters` on load)."""
    rope_scaling = shape.rope_scaling.to_hf() if shape.rope_scaling and arch.llama3_rope else None
    config: dict[str, Any] = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_ids,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
        # Both spellings: transformers < 4.56 and most hub checkpoints use `torch_dtype`,
        # transformers 5 writes `dtype`.
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    if arch.model_type in ("qwen2", "qwen3"):
        config["max_window_layers"] = shape.num_hidden_layers
    config.update(arch.extra_config)
    if transformers_version:
        # Without it, some transformers 5 releases take the tokenizer for a pre-5.0 Mistral
        # one and warn that its regex needs `fix_mistral_regex=True`.
        config["transformers_version"] = transformers_version
    return config
