"""Maps `architectures` in config.json to model classes, importing only the one asked for."""

from __future__ import annotations

import importlib

from torch import nn

from raylight.engine.errors import ModelDirectoryError

# architecture name -> (module under raylight.engine.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("llama", "LlamaForCausalLM"),
}


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ModelDirectoryError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(_MODELS)}"
        )
    module, name = _MODELS[architecture]
    return getattr(importlib.import_module(f"raylight.engine.models.{module}"), name)
