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
from raylight.kernels.row_gemv import choose_row_config
from raylight.kernels.skinny_linear import MAX_ROWS

_FUSABLE = (RMSNorm, RotaryEmbedding, SiluAndMul)
_LINEAR = (ColumnParallelLinear, RowParallelLinear, ParallelLMHead)


def row_kernel_measured(model: nn.Module) -> bool:
    """Whether every linear layer of `model` but the LM head has a measured setting of the
    one-row kernel (kernels/row_gemv.py) on the device its weight sits on."""
    projections = (ColumnParallelLinear, RowParallelLinear)
    weights = [m.weight for m in model.modules() if isinstance(m, projections)]
    return bool(weights) and all(
        choose_row_config(w.shape[0], w.shape[1], w.device) is not None for w in weights
    )


def use_fused_kernels(
    model: nn.Module,
    enabled: bool,
    skinny_linear: bool = False,
    pdl: bool = False,
    fuse_decode: bool | None = False,
) -> int:
    """Sets `fused` on every fusable layer of `model`, `skinny` on every linear layer, and
    `pdl` (programmatic dependent launch of their Triton kernels) on both; returns how many
    layers it set. `fuse_decode` (with both kernel families on) sets `fused_decode` on models
    that have it: their steps of at most `fused_decode_max_rows` rows run norms and activations
    inside the linear kernels. True: steps of up to MAX_ROWS rows; None ("auto"): one-row steps,
    where every projection has a measured setting of the one-row kernel (there the fused step
    is the faster one: kernels/row_gemv.py)."""
    on = enabled and skinny_linear
    if fuse_decode is None:
        rows = 1 if on and row_kernel_measured(model) else 0
    else:
        rows = MAX_ROWS if on and fuse_decode else 0
    count = 0
    for module in model.modules():
        if hasattr(type(module), "fused_decode"):
            module.fused_decode = rows > 0
            module.fused_decode_max_rows = rows
        if isinstance(module, _FUSABLE):
            module.fused = enabled
        elif isinstance(module, _LINEAR):
            module.skinny = skinny_linear
        else:
            continue
        module.pdl = pdl
        count += 1
    return count
