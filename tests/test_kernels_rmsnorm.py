"""RMSNorm kernels against the torch reference (the engine layer's own math)."""

from __future__ import annotations

import pytest
import torch

from raylight.kernels.rmsnorm import fused_add_rmsnorm, rmsnorm, rmsnorm_ref

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def _inputs(
    tokens: int, hidden: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, hidden, generator=gen) * 2 + 0.5).to(dtype)
    res = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w = (torch.rand(hidden, generator=gen) + 0.5).to(dtype)
    return x, res, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens,hidden", [(1, 7), (5, 130), (3, 1000)])
def test_rmsnorm(dtype: torch.dtype, tokens: int, hidden: int) -> None:
    x, _, w = _inputs(tokens, hidden, dtype, seed=hidden)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(
        rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6)[0], atol=atol, rtol=rtol
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_add(dtype: torch.dtype, inplace: bool) -> None:
    x, res, w = _inputs(6, 96, dtype, seed=3)
    want_out, want_res = rmsnorm_ref(x, w, 1e-5, residual=res)
    out, new_res = fused_add_rmsnorm(x, res, w, 1e-5, inplace=inplace)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, want_out, atol=atol, rtol=rtol)
    # One rounding of the sum; the interpreter truncates fp32 -> bf16 instead of rounding to
    # nearest, so allow one bf16 ulp there (fp32 must be exact).
    res_rtol = 0.0 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(new_res, want_res, atol=0, rtol=res_rtol)
    if inplace:
        assert out.data_ptr() == x.data_ptr() and new_res.data_ptr() == res.data_ptr()
        torch.testing.assert_close(res, want_res, atol=0, rtol=res_rtol)
    else:
        torch.testing.assert_close(x, _inputs(6, 96, dtype, seed=3)[0])


def test_strided_rows() -> None:
    x, res, w = _inputs(4, 50, torch.float32, seed=9)
    xs = torch.randn(4, 64)[:, :50].copy_(x)
    torch.testing.assert_close(rmsnorm(xs, w, 1e-6), rmsnorm_ref(x, w, 1e-6)[0])
    out, new_res = fused_add_rmsnorm(xs, res, w, 1e-6)
    torch.testing.assert_close(out, rmsnorm_ref(x, w, 1e-6, res)[0])


def test_errors() -> None:
    x, res, w = _inputs(3, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="x: expected 2 dims"):
        rmsnorm(x[0], w, 1e-6)
    with pytest.raises(ValueError, match="weight: expected a contiguous"):
        rmsnorm(x, w[:8], 1e-6)
    with pytest.raises(ValueError, match="residual: expected dtype"):
        fused_add_rmsnorm(x, res.half(), w, 1e-6)
    with pytest.raises(ValueError, match="residual: expected shape"):
        fused_add_rmsnorm(x, res[:2], w, 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm(torch.randn(16, 3).t(), w, 1e-6)


@pytest.mark.gpu
def test_gpu_large() -> None:
    x, res, w = (t.cuda() for t in _inputs(4096, 8192, torch.bfloat16, seed=1))
    out, new_res = fused_add_rmsnorm(x, res, w, 1e-5)
    want_out, want_res = rmsnorm_ref(x, w, 1e-5, residual=res)
    torch.testing.assert_close(out, want_out, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(new_res, want_res, atol=0, rtol=0)
