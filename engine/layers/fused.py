"""Switches the layers that have a fused Triton implementation (RMSNorm with or without the
residual add, rotary, SiLU-and-mul) between it and their torch path. The model runner calls
this after building a model, so model files never know which implementation runs."""

from __future__ import annotations

from torch import nn

from raylight.engine.layers.activation import SiluAndMul
from raylight.engine.layers.norm import RMSNorm
from raylight.engine.layers.rotary import RotaryEmbedding

_FUSABLE = (RMSNorm, RotaryEmbedding, SiluAndMul)


def use_fused_kernels(model: nn.Module, enabled: bool) -> int:
    """Sets `fused` on every fusable layer of `model`; returns how many layers it set."""
    count = 0
    for module in model.modules():
        if isinstance(module, _FUSABLE):
            module.fused = enabled
            count += 1
    return count
