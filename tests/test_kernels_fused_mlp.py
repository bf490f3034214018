"""The one-kernel decode MLP (kernels/fused_mlp.py) against the unfused layers' reference, and
the accumulator-reading RMSNorm that consumes its output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raylight.kernels.activation import silu_and_mul_ref
from raylight.kernels.fused_mlp import FusedMLPConfig, fused_mlp, fused_mlp_ref
from raylight.kernels.rmsnorm import accumulated_add_rmsnorm, rmsnorm_ref


def _inputs(m: int, hidden: int, inter: int, dtype: torch.dtype, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(m, hidden, generator=gen).to(dtype)
    res = torch.randn(m, hidden, generator=gen).to(dtype)
    g = (torch.rand(hidden, generator=gen) + 0.5).to(dtype)
    wgu = (torch.randn(2 * inter, hidden, generator=gen) / hidden**0.5).to(dtype)
    wd = (torch.randn(hidden, inter, generator=gen) / inter**0.5).to(dtype)
    return h, res, g, wgu, wd


def _float64_mlp(h, res, g, eps, wgu, wd) -> torch.Tensor:
    """An independent definition: every op in float64, no intermediate rounding."""
    x = h.double() + res.double()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.double()
    gate, up = F.linear(x, wgu.double()).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, wd.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,hidden,inter,block,block_k,block_n", [
    (1, 64, 40, 16, 16, 32), (3, 128, 96, 32, 64, 16), (4, 64, 17, 16, 32, 32),
    (2, 32, 48, 16, 16, 16)])  # fmt: skip
def test_fused_mlp_matches_reference(dtype, m, hidden, inter, block, block_k, block_n) -> None:
    h, res, g, wgu, wd = _inputs(m, hidden, inter, dtype, seed=hidden + inter + m)
    acc = torch.full((m, hidden), 0.25)  # fused_mlp adds to what is there
    cfg = FusedMLPConfig(block, block_k, block_n, num_warps=4, num_stages=2)
    summed = fused_mlp(h, res, g, 1e-5, wgu, wd, acc, cfg)
    want, want_sum = fused_mlp_ref(h, res, g, 1e-5, wgu, wd)
    # The interpreter truncates fp32 -> bf16 instead of rounding, so one ulp of slack there.
    res_rtol = 0.0 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(summed, want_sum, atol=0, rtol=res_rtol)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(acc, want + 0.25, atol=tol, rtol=tol)
    exact = _float64_mlp(h, res, g, 1e-5, wgu, wd)
    scale = exact.abs().max().item()
    assert (acc.double() - 0.25 - exact).abs().max().item() < (1e-5 if dtype == torch.float32
                                                                else 5e-2) * scale


def test_fused_mlp_reference_is_the_unfused_chain() -> None:
    h, res, g, wgu, wd = _inputs(2, 32, 24, torch.bfloat16, seed=5)
    normed, summed = rmsnorm_ref(h, g, 1e-6, residual=res)
    act = silu_and_mul_ref(F.linear(normed.float(), wgu.float()).to(h.dtype))
    want = F.linear(act.float(), wd.float())
    got, got_sum = fused_mlp_ref(h, res, g, 1e-6, wgu, wd)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got_sum, summed, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulated_add_rmsnorm(dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    acc = torch.randn(3, 96, generator=gen) * 3
    res = torch.randn(3, 96, generator=gen).to(dtype)
    w = (torch.rand(96, generator=gen) + 0.5).to(dtype)
    want_out, want_res = rmsnorm_ref(acc.to(dtype), w, 1e-6, residual=res)
    out, new_res = accumulated_add_rmsnorm(acc, res, w, 1e-6)
    # Two roundings (acc, then the sum), which the interpreter truncates: a bf16 ulp or two
    # of the operands (|acc| < 16) where the sum cancels.
    atol, rtol = (0.0, 0.0) if dtype == torch.float32 else (2**-4, 2**-6)
    torch.testing.assert_close(new_res, want_res, atol=atol, rtol=rtol)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, want_out, atol=tol, rtol=tol)
    assert torch.count_nonzero(acc) == 0


def test_fused_mlp_errors() -> None:
    h, res, g, wgu, wd = _inputs(1, 128, 40, torch.float32, seed=0)
    acc = torch.zeros(1, 128)
    with pytest.raises(ValueError, match="divisible by 64 and 64"):
        fused_mlp(h[:, :96], res[:, :96], g[:96], 1e-6, wgu[:, :96], wd[:96], acc[:, :96])
    with pytest.raises(ValueError, match="rows"):
        fused_mlp(h.expand(5, 128).contiguous(), res.expand(5, 128).contiguous(), g, 1e-6, wgu,
                  wd, torch.zeros(5, 128))  # fmt: skip
    with pytest.raises(ValueError, match="acc: expected dtype"):
        fused_mlp(h, res, g, 1e-6, wgu, wd, acc.bfloat16())
    with pytest.raises(ValueError, match="down_weight: expected a contiguous"):
        fused_mlp(h, res, g, 1e-6, wgu, wd[:, :39], acc)
    with pytest.raises(ValueError, match="residual: expected dtype"):
        fused_mlp(h, res.bfloat16(), g, 1e-6, wgu, wd, acc)
    with pytest.raises(ValueError, match="acc: expected dtype"):
        accumulated_add_rmsnorm(acc.bfloat16(), res, g, 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 4])
def test_fused_mlp_gpu_llama_shape(m) -> None:
    h, res, g, wgu, wd = (t.cuda() for t in _inputs(m, 4096, 14336, torch.bfloat16, seed=m))
    acc = torch.zeros(m, 4096, device="cuda")
    summed = fused_mlp(h, res, g, 1e-5, wgu, wd, acc)
    want, want_sum = fused_mlp_ref(h, res, g, 1e-5, wgu, wd)
    torch.testing.assert_close(summed, want_sum, atol=0, rtol=0)
    torch.testing.assert_close(acc, want, atol=2e-3, rtol=2e-2)
    out, new_res = accumulated_add_rmsnorm(acc, summed, g, 1e-5)
    want_out, want_res = rmsnorm_ref(want.to(torch.bfloat16), g, 1e-5, residual=want_sum)
    torch.testing.assert_close(new_res, want_res, atol=2e-2, rtol=2e-2)
    assert torch.count_nonzero(acc) == 0
