"""silu_and_mul kernel against its torch reference and the engine's layer."""

from __future__ import annotations

import pytest
import torch

from raylight.kernels.activation import silu_and_mul, silu_and_mul_ref

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens,inter", [(1, 7), (5, 33), (3, 1500)])
def test_matches_reference(dtype: torch.dtype, tokens: int, inter: int) -> None:
    gen = torch.Generator().manual_seed(tokens * 1000 + inter)
    x = (torch.randn(tokens, 2 * inter, generator=gen) * 3).to(dtype)
    out = silu_and_mul(x)
    assert out.shape == (tokens, inter) and out.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, silu_and_mul_ref(x), atol=atol, rtol=rtol)
    # The reference itself agrees with the engine's definition.
    gate, up = x.float().chunk(2, dim=-1)
    torch.testing.assert_close(
        silu_and_mul_ref(x).float(), gate * torch.sigmoid(gate) * up, atol=atol, rtol=rtol
    )


def test_strided_rows_and_out() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 40, generator=gen)
    x = base[:, :26]  # row stride 40, last dim contiguous
    out = torch.full((4, 13), 7.0)
    got = silu_and_mul(x, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, silu_and_mul_ref(x), atol=1e-5, rtol=1e-5)


def test_errors() -> None:
    with pytest.raises(ValueError, match="x: expected 2 dims"):
        silu_and_mul(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(2, 5))
    with pytest.raises(ValueError, match="x: expected dtype"):
        silu_and_mul(torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        silu_and_mul(torch.randn(8, 2).t())
    with pytest.raises(ValueError, match="out: expected shape"):
        silu_and_mul(torch.randn(2, 8), out=torch.empty(2, 3))


@pytest.mark.gpu
def test_gpu_large() -> None:
    x = torch.randn(4096, 2 * 14336, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), atol=2e-2, rtol=2e-2)
