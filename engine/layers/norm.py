"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

import torch
from torch import nn

from raylight.engine.layers.linear import check_shape


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype), False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (norm(x + residual), x + residual); the second is the next residual."""
        if residual is not None:
            x = x + residual
        # Statistics in float32, as HF does, then back to the input dtype before the weight.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype), x

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0]

    def load_shard(self, name: str, loaded: torch.Tensor, shard: int = 0) -> None:
        check_shape(name, loaded, tuple(self.weight.shape))
        self.weight.data.copy_(loaded)
