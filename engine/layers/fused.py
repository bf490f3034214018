"""Switches the layers that have a fused Triton implementation (RMSNorm with or without the
residual add, rotary, SiLU-and-mul) between it and their torch path, and the linear layers
between cuBLAS and the small-batch Triton kernel. The model runner calls this after building a
model, so model files never know which implementation runs."""

from __future__ import annotations

from torch import nn

from raylight.engine.layers.activation import SiluAndMul
from raylight.engine.layers.embedding import ParallelLMHead
from raylight.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from raylight.engine.layers.norm import RMSNorm
from raylight.engine.layers.rotary import RotaryEmbedding

_FUSABLE = (RMSNorm, RotaryEmbedding, SiluAndMul)
_LINEAR = (ColumnParallelLinear, RowParallelLinear, ParallelLMHead)


def use_fused_kernels(
    model: nn.Module,
    enabled: bool,
    skinny_linear: bool = False,
    pdl: bool = False,
    fuse_decode: bool = False,
) -> int:
    """Sets `fused` on every fusable layer of `model`, `skinny` on every linear layer, and
    `pdl` (programmatic dependent launch of their Triton kernels) on both; returns how many
    layers it set. `fuse_decode` (with both kernel families on) sets `fused_decode` on models
    that have it: their small-batch steps run norms and activations inside the linear kernels."""
    count = 0
    for module in model.modules():
        if hasattr(type(module), "fused_decode"):
            module.fused_decode = fuse_decode and enabled and skinny_linear
        if isinstance(module, _FUSABLE):
            module.fused = enabled
        elif isinstance(module, _LINEAR):
            module.skinny = skinny_linear
        else:
            continue
        module.pdl = pdl
        count += 1
    return count
