"""The `pdl` engine option (programmatic dependent launch) on CPU: it resolves to off, every
kernel wrapper accepts it and gives the same values (the interpreter has no grid dependencies,
so the kernels run as plain launches), and use_fused_kernels hands it to the layers."""

from __future__ import annotations

from pathlib import Path

import torch

from raylight.engine.config import EngineOptions, resolve_engine_config
from raylight.engine.layers.activation import SiluAndMul
from raylight.engine.layers.fused import use_fused_kernels
from raylight.engine.layers.linear import ColumnParallelLinear
from raylight.engine.layers.norm import RMSNorm
from raylight.engine.model_config import load_arch_config
from raylight.engine.parallel import TPGroup
from raylight.kernels._common import pdl_enabled, pdl_launch_options
from raylight.kernels.activation import silu_and_mul
from raylight.kernels.rmsnorm import fused_add_rmsnorm, rmsnorm
from raylight.kernels.skinny_linear import skinny_linear


def test_pdl_resolves_off_on_cpu(tiny_models: dict[str, Path]) -> None:
    model = tiny_models["llama"]
    config = resolve_engine_config(model, load_arch_config(model),
                                   EngineOptions(device="cpu", pdl=True))  # fmt: skip
    assert config.pdl is False
    assert pdl_enabled(True, torch.zeros(1)) is False
    assert pdl_launch_options(True) == {"launch_pdl": True} and pdl_launch_options(False) == {}


def test_use_fused_kernels_sets_pdl_on_fused_and_linear_layers() -> None:
    tp = TPGroup()
    linear = ColumnParallelLinear(8, [16], False, tp, torch.float32)
    model = torch.nn.ModuleList([RMSNorm(8, 1e-6, torch.float32), SiluAndMul(), linear])
    assert use_fused_kernels(model, True, True, pdl=True) == 3
    assert all(m.pdl for m in model)
    use_fused_kernels(model, True, True)
    assert not any(m.pdl for m in model)


def test_kernel_wrappers_accept_pdl() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=gen)
    res = torch.randn(3, 64, generator=gen)
    w = torch.randn(64, generator=gen)
    assert torch.equal(rmsnorm(x, w, 1e-6, pdl=True), rmsnorm(x, w, 1e-6))
    got = fused_add_rmsnorm(x, res, w, 1e-6, pdl=True)
    want = fused_add_rmsnorm(x, res, w, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert torch.equal(silu_and_mul(x, pdl=True), silu_and_mul(x))
    weight = torch.randn(40, 64, generator=gen)
    assert torch.equal(skinny_linear(x, weight, pdl=True), skinny_linear(x, weight))
