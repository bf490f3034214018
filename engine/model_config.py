"""The architecture of a model, read from an HF `config.json` into one typed record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylight.engine.errors import ModelDirectoryError


@dataclass(frozen=True, slots=True)
class RopeConfig:
    theta: float
    # "default" or "llama3"; other scaling types are refused when the config is read.
    scaling_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True, slots=True)
class ModelArchConfig:
    """What a decoder-only Llama-family model looks like. Variants are flags, not subclasses."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 (and Llama's `attention_bias`)
    o_bias: bool  # Llama's `attention_bias` also covers o_proj; Qwen2 has none there
    mlp_bias: bool
    qk_norm: bool  # Qwen3: RMSNorm over each head of q and k before rope
    sliding_window: int | None
    torch_dtype: str  # the dtype the checkpoint was saved in ("bfloat16", "float32", ...)
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]


SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)


def load_arch_config(model_dir: Path) -> ModelArchConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelDirectoryError(f"{model_dir}: no config.json (not an HF model directory)")
    cfg = json.loads(path.read_text())
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    return parse_arch_config(cfg, gen, source=str(path))


def parse_arch_config(
    cfg: dict[str, Any], generation: dict[str, Any], source: str = "config.json"
) -> ModelArchConfig:
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ModelDirectoryError(
            f"{source}: unsupported architecture {archs or '(none given)'}; "
            f"raylight supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def need(key: str) -> Any:
        if key not in cfg:
            raise ModelDirectoryError(f"{source}: missing field {key!r} for {arch}")
        return cfg[key]

    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    is_qwen2 = arch == "Qwen2ForCausalLM"
    attention_bias = bool(cfg.get("attention_bias", False))
    sliding = cfg.get("sliding_window")
    if is_qwen2 and not cfg.get("use_sliding_window", False):
        sliding = None
    eos = generation.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return ModelArchConfig(
        architecture=arch,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope=_parse_rope(cfg, source),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=is_qwen2 or attention_bias,
        o_bias=attention_bias and not is_qwen2,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=arch == "Qwen3ForCausalLM",
        sliding_window=int(sliding) if sliding else None,
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
        bos_token_id=generation.get("bos_token_id", cfg.get("bos_token_id")),
        eos_token_ids=eos_ids,
    )


def _parse_rope(cfg: dict[str, Any], source: str) -> RopeConfig:
    # transformers 5 writes `rope_parameters`; older files have `rope_theta` + `rope_scaling`.
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind != "llama3":
        raise ModelDirectoryError(
            f"{source}: rope scaling type {kind!r} is not supported (supported: default, llama3)"
        )
    return RopeConfig(
        theta=theta,
        scaling_type="llama3",
        factor=float(merged["factor"]),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            merged.get("original_max_position_embeddings", 8192)
        ),
    )
