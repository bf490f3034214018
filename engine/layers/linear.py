"""Linear layers sharded for tensor parallelism; each parameter knows how to load its shard.

Column-parallel layers split the output features across ranks (no communication); row-parallel
layers split the input features and all-reduce the partial sums. With one rank both are plain
linears.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylight.engine.errors import ModelDirectoryError
from raylight.engine.parallel import TPGroup
from raylight.kernels.row_gemv import RowGemvConfig, choose_row_config, row_gemv
from raylight.kernels.skinny_linear import MAX_ROWS, skinny_linear
from raylight.kernels.skinny_linear_table import choose_config


def _row_config(x: torch.Tensor, weight: torch.Tensor) -> RowGemvConfig | None:
    """The one-row kernel's measured setting for x W^T, if x is one contiguous row and the
    weight's shape was measured on this device."""
    if x.dim() != 2 or x.shape[0] != 1 or x.stride(-1) != 1 or weight.stride(-1) != 1:
        return None
    return choose_row_config(weight.shape[0], weight.shape[1], x.device)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    skinny: bool,
    pdl: bool = False,
) -> torch.Tensor:
    """F.linear, or with `skinny` the Triton small-batch kernels where their sweeps say they win
    (launched with programmatic dependent launch if `pdl`): for one row the one-wave kernel
    (kernels/row_gemv.py) where it was measured, else the skinny kernel or cuBLAS."""
    row_config = _row_config(x, weight) if skinny else None
    if row_config is not None:
        return row_gemv(x, weight, bias, row_config, pdl=pdl)
    if skinny and x.dim() == 2 and x.shape[0] <= MAX_ROWS and x.stride(-1) == 1:
        # With PDL the kernel is preferred where it was swept: cuBLAS would break the chain.
        config = choose_config(x.shape[0], weight.shape[0], weight.shape[1], prefer_kernel=pdl)
        if config is not None:
            return skinny_linear(x, weight, bias, config, pdl=pdl)
    return F.linear(x, weight, bias)


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pdl: bool,
    *,
    norm: nn.Module | None = None,
    gated: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The small-batch kernel with the decode layer's fusions (kernels/skinny_linear.py):
    `norm` (an RMSNorm) applied to x first, silu(gate) * up of a gated [gate | up] weight,
    `residual` added and updated in place. One rank only (a row-parallel layer would add the
    residual before its all-reduce); callers check `fused_linear_fits`. One row of a shape
    measured for kernels/row_gemv.py takes that kernel, with the same fusions."""
    norm_weight = None if norm is None else norm.weight
    eps = 1e-6 if norm is None else norm.eps
    row_config = _row_config(x, weight)
    if row_config is not None:
        return row_gemv(x, weight, bias, row_config, pdl, norm_weight=norm_weight, eps=eps,
                        gated=gated, residual=residual, out=residual)  # fmt: skip
    config = choose_config(x.shape[0], weight.shape[0], weight.shape[1], fused=True)
    return skinny_linear(x, weight, bias, config, pdl, norm_weight=norm_weight, eps=eps,
                         gated=gated, residual=residual, out=residual)  # fmt: skip


def fused_linear_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `fused_linear` takes x: a few contiguous rows in the weight's dtype."""
    return (x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.stride(-1) == 1
            and x.dtype == weight.dtype)  # fmt: skip


def check_shape(name: str, got: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(got.shape) != expected:
        raise ModelDirectoryError(
            f"tensor {name!r} has shape {tuple(got.shape)}, expected {expected}"
        )


class ColumnParallelLinear(nn.Module):
    """y = x W^T (+ b) with W's rows (output features) split across ranks.

    `output_sizes` lists the full sizes of the fused sub-matrices (e.g. [gate, up]); each one is
    split across ranks separately, so shard `i` of this rank sits at `offsets[i]`.
    """

    skinny: bool = False  # set by layers.fused.use_fused_kernels
    pdl: bool = False  # likewise

    def __init__(
        self, in_features: int, output_sizes: list[int], bias: bool, tp: TPGroup, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.tp = tp
        self.in_features = in_features
        self.local_sizes = [tp.shard(n, "output features") for n in output_sizes]
        self.offsets = [sum(self.local_sizes[:i]) for i in range(len(output_sizes))]
        out_local = sum(self.local_sizes)
        self.weight = nn.Parameter(torch.empty(out_local, in_features, dtype=dtype), False)
        self.bias = nn.Parameter(torch.empty(out_local, dtype=dtype), False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.skinny, self.pdl)

    def load_shard(self, name: str, loaded: torch.Tensor, shard: int = 0) -> None:
        """Copies this rank's rows of the full tensor `loaded` (weight or bias) into `shard`."""
        size = self.local_sizes[shard]
        rows_full = size * self.tp.size
        full = (rows_full, self.in_features) if loaded.dim() == 2 else (rows_full,)
        check_shape(name, loaded, full)
        rows = loaded.narrow(0, self.tp.rank * size, size)
        target = self.weight if loaded.dim() == 2 else self.bias
        if target is None:
            raise ModelDirectoryError(f"tensor {name!r}: this model has no bias there")
        target.data.narrow(0, self.offsets[shard], size).copy_(rows)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q, k, v projections. KV heads are split across ranks, or replicated when there are
    fewer KV heads than ranks (each rank then keeps the KV head its query heads use)."""

    def __init__(
        self,
        hidden: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        tp: TPGroup,
        dtype: torch.dtype,
    ) -> None:
        self.head_dim = head_dim
        self.num_heads_local = tp.shard(num_heads, "num_attention_heads")
        self.kv_replicas = max(1, tp.size // num_kv_heads)
        self.num_kv_heads_local = max(1, num_kv_heads // tp.size)
        self.num_kv_heads = num_kv_heads
        q = num_heads * head_dim
        kv = self.num_kv_heads_local * head_dim * tp.size
        super().__init__(hidden, [q, kv, kv], bias, tp, dtype)

    def load_qkv(self, name: str, loaded: torch.Tensor, which: str) -> None:
        shard = "qkv".index(which)
        if which == "q":
            self.load_shard(name, loaded, 0)
            return
        size = self.local_sizes[shard]
        full_rows = self.num_kv_heads * self.head_dim
        expected = (full_rows, self.in_features) if loaded.dim() == 2 else (full_rows,)
        check_shape(name, loaded, expected)
        kv_head = self.tp.rank // self.kv_replicas
        rows = loaded.narrow(0, kv_head * size, size)
        target = self.weight if loaded.dim() == 2 else self.bias
        if target is None:
            raise ModelDirectoryError(f"tensor {name!r}: this model has no bias there")
        target.data.narrow(0, self.offsets[shard], size).copy_(rows)

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, q+k+v] -> q [T, heads, D], k [T, kv_heads, D], v [T, kv_heads, D] (local heads)."""
        q, k, v = qkv.split(self.local_sizes, dim=-1)
        d = self.head_dim
        return (
            q.view(-1, self.num_heads_local, d),
            k.view(-1, self.num_kv_heads_local, d),
            v.view(-1, self.num_kv_heads_local, d),
        )


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local W_local^T) + b, with W's columns (input features) split."""

    skinny: bool = False  # set by layers.fused.use_fused_kernels
    pdl: bool = False  # likewise

    def __init__(
        self, in_features: int, out_features: int, bias: bool, tp: TPGroup, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.tp = tp
        self.out_features = out_features
        self.in_local = tp.shard(in_features, "input features")
        self.weight = nn.Parameter(torch.empty(out_features, self.in_local, dtype=dtype), False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(linear(x, self.weight, None, self.skinny, self.pdl))
        return y if self.bias is None else y + self.bias

    def load_shard(self, name: str, loaded: torch.Tensor, shard: int = 0) -> None:
        if loaded.dim() == 1:
            check_shape(name, loaded, (self.out_features,))
            if self.bias is None:
                raise ModelDirectoryError(f"tensor {name!r}: this model has no bias there")
            self.bias.data.copy_(loaded)
            return
        check_shape(name, loaded, (self.out_features, self.in_local * self.tp.size))
        self.weight.data.copy_(loaded.narrow(1, self.tp.rank * self.in_local, self.in_local))
