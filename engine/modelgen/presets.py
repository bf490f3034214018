"""Model shapes that `make_model` can generate: toy sizes for tests and real LLM shapes.

Pure data, no torch import: the CLI reads the preset names while building its parser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Llama3RopeScaling:
    """Llama 3.1 "llama3" RoPE frequency scaling, written to config.json as `rope_scaling`."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def to_hf(self) -> dict[str, float | int | str]:
        return {
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Architecture-independent sizes of a decoder-only transformer.

    Invariants: `num_attention_heads % num_key_value_heads == 0`;
    `bpe_vocab_size <= vocab_size`. Ids in [bpe_vocab_size, vocab_size - specials) are filler
    tokens (see tokenizer.py), so every id of the model decodes to some text.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    bpe_vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    rope_scaling: Llama3RopeScaling | None = None
    tie_word_embeddings: bool = False
    default_arch: str = "llama"

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.bpe_vocab_size > self.vocab_size:
            raise ValueError("bpe_vocab_size must not exceed vocab_size")


_LLAMA31_ROPE = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
# A small original context so positions of a few hundred tokens already fall in the scaled
# (low-frequency) band and the engine's llama3 rope path changes results measurably.
_TOY_ROPE = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=256
)

_TINY = ModelShape(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, vocab_size=2048, bpe_vocab_size=2048,
    max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, rope_scaling=_TOY_ROPE,
)

PRESETS: MappingProxyType[str, ModelShape] = MappingProxyType({
    "tiny": _TINY,
    # Same as tiny with lm_head shared with embed_tokens (the Qwen2.5-0.5B / Llama-3.2-1B layout).
    "tiny-tied": replace(_TINY, tie_word_embeddings=True),
    # ~93M parameters: big enough that a CPU decode step costs >= 10 ms.
    "small": ModelShape(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=2, head_dim=64, vocab_size=16384, bpe_vocab_size=16384,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=Llama3RopeScaling(8.0, 1.0, 4.0, original_max_position_embeddings=1024),
    ),
    "llama3-8b": ModelShape(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, bpe_vocab_size=16384,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=_LLAMA31_ROPE,
    ),
    "llama3-70b": ModelShape(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, bpe_vocab_size=16384,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=_LLAMA31_ROPE,
    ),
    "qwen2.5-7b": ModelShape(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, head_dim=128, vocab_size=152064, bpe_vocab_size=16384,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        default_arch="qwen2",
    ),
})


def get_preset(name: str) -> ModelShape:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
