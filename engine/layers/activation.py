"""SiLU(gate) * up over a fused [gate | up] projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylight.kernels.activation import silu_and_mul as silu_and_mul_triton


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2 * I] -> [T, I]
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class SiluAndMul(nn.Module):
    """`silu_and_mul` as a layer; `fused = True` (set by the model runner, see
    `layers.fused.use_fused_kernels`) runs one Triton kernel instead of three torch ops."""

    fused: bool = False
    pdl: bool = False  # the kernel with programmatic dependent launch (set with `fused`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, 2 * I] -> [T, I]
        if self.fused and x.dim() == 2 and x.stride(-1) == 1:
            return silu_and_mul_triton(x, pdl=self.pdl)
        return silu_and_mul(x)
