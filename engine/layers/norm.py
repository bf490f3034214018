"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

import torch
from torch import nn

from raylight.engine.layers.linear import check_shape
from raylight.kernels.rmsnorm import fused_add_rmsnorm, rmsnorm


class RMSNorm(nn.Module):
    """`fused = True` (set by the model runner) runs the Triton kernels for 2-D inputs with a
    contiguous last dim (hidden states); other inputs (q/k norms over [T, heads, D] views) and
    the default take the torch path. Both round the same way: see kernels/rmsnorm.py."""

    fused: bool = False
    pdl: bool = False  # the kernels with programmatic dependent launch (set with `fused`)

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype), False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (norm(x + residual), x + residual); the second is the next residual."""
        if self.fused and self._kernel_fits(x, residual):
            if residual is None:
                return rmsnorm(x, self.weight, self.eps, pdl=self.pdl), x
            return fused_add_rmsnorm(x, residual, self.weight, self.eps, pdl=self.pdl)
        if residual is not None:
            x = x + residual
        # Statistics in float32, as HF does, then back to the input dtype before the weight.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype), x

    def _kernel_fits(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        if x.dim() != 2 or x.stride(-1) != 1 or x.dtype != self.weight.dtype:
            return False
        return residual is None or (residual.stride(-1) == 1 and residual.dtype == x.dtype)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0]

    def load_shard(self, name: str, loaded: torch.Tensor, shard: int = 0) -> None:
        check_shape(name, loaded, tuple(self.weight.shape))
        self.weight.data.copy_(loaded)
