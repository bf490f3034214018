"""Small-batch linear kernel against its torch reference, its config table, and the layers'
dispatch between it and F.linear."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import raylight.kernels.skinny_linear_table as sk
from raylight.engine.layers.linear import linear
from raylight.kernels.skinny_linear import SkinnyConfig, skinny_linear, skinny_linear_ref

# Both inner products, a tile wider than N, one without software pipelining.
CONFIGS = [
    SkinnyConfig(False, 16, 64, 4, 2),
    SkinnyConfig(True, 16, 64, 4, 2),
    SkinnyConfig(False, 8, 128, 4, 1),
]
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (3, 64, 256), (8, 50, 1030), (1, 16, 16)])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["fma", "dot", "fma-nostage"])
def test_matches_reference(dtype, m: int, n: int, k: int, cfg: SkinnyConfig) -> None:
    gen = torch.Generator().manual_seed(m * 7 + n * 13 + k)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    atol, rtol = TOL[dtype]
    for bias in (None, b):
        y = skinny_linear(x, w, bias, cfg)
        assert y.shape == (m, n) and y.dtype == dtype
        torch.testing.assert_close(y, skinny_linear_ref(x, w, bias), atol=atol, rtol=rtol)
    # The reference agrees with an independent float64 product.
    exact = (x.double() @ w.double().t() + b.double()).to(dtype)
    torch.testing.assert_close(skinny_linear_ref(x, w, b), exact, atol=atol, rtol=rtol)


def test_strided_rows_and_empty() -> None:
    base = torch.randn(3, 80)
    x = base[:, :64]  # row stride 80
    w = torch.randn(24, 64)
    torch.testing.assert_close(skinny_linear(x, w), skinny_linear_ref(x, w), atol=1e-4, rtol=1e-4)
    assert skinny_linear(torch.randn(0, 8), torch.randn(5, 8)).shape == (0, 5)
    b = torch.randn(5)
    y = skinny_linear(torch.randn(2, 0), torch.randn(5, 0), b)
    torch.testing.assert_close(y, b.expand(2, 5))


def test_errors() -> None:
    with pytest.raises(ValueError, match="at most 8 rows"):
        skinny_linear(torch.randn(9, 16), torch.randn(4, 16))
    with pytest.raises(ValueError, match="K, the input features"):
        skinny_linear(torch.randn(1, 16), torch.randn(4, 15))
    with pytest.raises(ValueError, match="weight: expected dtype"):
        skinny_linear(torch.randn(1, 16), torch.randn(4, 16, dtype=torch.float16))
    with pytest.raises(ValueError, match="weight: must be contiguous"):
        skinny_linear(torch.randn(1, 16), torch.randn(16, 4).t())
    with pytest.raises(ValueError, match="bias: dim 0"):
        skinny_linear(torch.randn(1, 16), torch.randn(4, 16), torch.randn(5))


def test_config_table(tmp_path, monkeypatch) -> None:
    """The table picks the entry of the smallest swept M >= M; null means cuBLAS; shapes never
    swept get the kernel at M = 1 only."""
    monkeypatch.setattr(sk, "TABLE_DIR", tmp_path)
    sk.load_table.cache_clear()
    sk.choose_config.cache_clear()
    fast = [True, 32, 256, 4, 4]
    kernel_best = [False, 8, 512, 2, 4]
    entries = [{"n": 64, "k": 128, "m": 1, "config": fast},
               {"n": 64, "k": 128, "m": 4, "config": None},
               {"n": 96, "k": 128, "m": 1, "config": None,
                "kernel_config": kernel_best}]  # fmt: skip
    sk.table_path("Fake GPU 80GB").write_text(json.dumps({"entries": entries}))
    try:
        # Where cuBLAS won, prefer_kernel (PDL) takes the kernel's best swept setting; entries
        # without one (older tables) keep cuBLAS.
        assert sk.choose_config(1, 96, 128, "Fake GPU 80GB") is None
        assert sk.choose_config(1, 96, 128, "Fake GPU 80GB", prefer_kernel=True) == SkinnyConfig(
            *kernel_best)
        assert sk.choose_config(2, 64, 128, "Fake GPU 80GB", prefer_kernel=True) is None
        assert sk.choose_config(1, 64, 128, "Fake GPU 80GB", prefer_kernel=True) == SkinnyConfig(
            *fast)
        assert sk.choose_config(1, 64, 128, "Fake GPU 80GB") == SkinnyConfig(*fast)
        assert sk.choose_config(2, 64, 128, "Fake GPU 80GB") is None
        assert sk.choose_config(8, 64, 128, "Fake GPU 80GB") is None  # above the swept M
        assert sk.choose_config(1, 32, 128, "Fake GPU 80GB") == sk.DEFAULT_CONFIG
        assert sk.choose_config(2, 32, 128, "Fake GPU 80GB") is None
        assert sk.choose_config(1, 64, 128, "Other GPU") == sk.DEFAULT_CONFIG
    finally:
        sk.load_table.cache_clear()
        sk.choose_config.cache_clear()


def test_layer_dispatch_matches_f_linear(monkeypatch) -> None:
    """`linear` runs the kernel only with `skinny`, at most MAX_ROWS rows and a config."""
    import raylight.engine.layers.linear as linear_mod

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return skinny_linear(*args, **kwargs)

    monkeypatch.setattr(linear_mod, "skinny_linear", counting)
    x = torch.randn(2, 32)
    w, b = torch.randn(48, 32), torch.randn(48)
    want = F.linear(x, w, b)
    torch.testing.assert_close(linear(x, w, b, skinny=False), want)
    assert calls == []
    torch.testing.assert_close(linear(x[:1], w, b, skinny=True), want[:1], atol=1e-4, rtol=1e-4)
    assert calls == [1]  # an unswept shape at M = 1: the kernel with DEFAULT_CONFIG
    linear(x, w, b, skinny=True)  # M = 2 of an unswept shape: cuBLAS
    big = torch.randn(12, 32)  # above MAX_ROWS: F.linear
    torch.testing.assert_close(linear(big, w, b, skinny=True), F.linear(big, w, b))
    assert calls == [1]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_gpu_llama_shapes(m: int) -> None:
    for n, k in [(6144, 4096), (4096, 14336), (128256, 4096)]:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        for cfg in CONFIGS + [sk.choose_config(m, n, k) or sk.DEFAULT_CONFIG]:
            torch.testing.assert_close(
                skinny_linear(x, w, None, cfg), skinny_linear_ref(x, w), atol=2e-2, rtol=2e-2
            )


FUSED = {
    "norm": dict(norm=True),
    "gated": dict(gated=True),
    "residual": dict(residual=True),
    "norm-gated-bias": dict(norm=True, gated=True, bias=True),
    "norm-bias": dict(norm=True, bias=True),
}


def _fused_case(dtype, m: int, n: int, k: int, norm=False, gated=False, residual=False,
                bias=False):  # fmt: skip
    gen = torch.Generator().manual_seed(m * 5 + n + k)
    rows = 2 * n if gated else n
    kw = {"gated": gated}
    x = (3 * torch.randn(m, k, generator=gen)).to(dtype)  # a residual stream, not unit scale
    w = (torch.randn(rows, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(rows, generator=gen).to(dtype) if bias else None
    if norm:
        kw["norm_weight"] = (1 + 0.2 * torch.randn(k, generator=gen)).to(dtype)
        kw["eps"] = 1e-5
    if residual:
        kw["residual"] = torch.randn(m, n, generator=gen).to(dtype)
    return x, w, b, kw


def _exact(x, w, b, norm_weight=None, eps=0.0, gated=False, residual=None) -> torch.Tensor:
    """float64 from the definitions, no intermediate rounding."""
    x = x.double()
    if norm_weight is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    y = x @ w.double().t() + (0 if b is None else b.double())
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y if residual is None else y + residual.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (3, 64, 256), (8, 24, 1030)])
@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["fma", "dot"])
@pytest.mark.parametrize("variant", list(FUSED))
def test_fused_variants_match_the_unfused_ops(dtype, m, n, k, cfg, variant) -> None:
    """Norm prologue, SiLU-and-mul and residual epilogues against the reference (the unfused
    layers' roundings), and the reference against float64 definitions."""
    x, w, b, kw = _fused_case(dtype, m, n, k, **FUSED[variant])
    y = skinny_linear(x, w, b, cfg, **kw)
    want = skinny_linear_ref(x, w, b, **kw)
    assert y.shape == want.shape == (m, n) and y.dtype == dtype
    scale = max(1.0, want.abs().max().item())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (y.float() - want.float()).abs().max().item() <= tol * scale
    exact = _exact(x, w, b, **kw)
    assert (want.double() - exact).abs().max().item() <= tol * scale


def test_residual_epilogue_in_place_and_errors() -> None:
    x, w, _, kw = _fused_case(torch.float32, 2, 40, 64, residual=True)
    res = kw["residual"]
    want = skinny_linear_ref(x, w, residual=res)
    out = skinny_linear(x, w, residual=res, out=res)  # the residual stream updated in place
    assert out is res
    torch.testing.assert_close(res, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="even number of rows"):
        skinny_linear(x, w[:39], gated=True)
    with pytest.raises(ValueError, match="residual: expected shape"):
        skinny_linear(x, w, gated=True, residual=torch.zeros(2, 40))
    with pytest.raises(ValueError, match="norm_weight"):
        skinny_linear(x, w, norm_weight=torch.ones(63))


def test_fused_configs_from_the_sweep_table(tmp_path, monkeypatch) -> None:
    """skinny_sweep --fused: make_table records each shape's best fused setting, and
    choose_config(fused=True) takes it; without one, the kernel's best (as prefer_kernel)."""
    from raylight.benchmarks.skinny_sweep import make_table

    plain, kernel, fused = [True, 32, 256, 4, 4], [False, 8, 512, 2, 4], [False, 16, 512, 4, 3]
    results = [
        {"n": 64, "k": 128, "m": 1, "cublas_ms": 1.0, "fusion": [],
         "best": {"config": plain, "ms": 0.5}},
        {"n": 64, "k": 128, "m": 1, "cublas_ms": 1.0, "fusion": ["norm"],
         "best": {"config": fused, "ms": 0.6}},
        {"n": 96, "k": 128, "m": 1, "cublas_ms": 1.0, "fusion": [],
         "best": {"config": kernel, "ms": 1.5}},
    ]  # fmt: skip
    table = make_table({"device": "Fake GPU 80GB", "torch": "x", "command": "c",
                        "results": results})  # fmt: skip
    assert len(table["entries"]) == 2
    assert table["entries"][0]["fused_config"] == fused and table["entries"][0]["config"] == plain
    assert "fused_config" not in table["entries"][1] and table["entries"][1]["config"] is None
    monkeypatch.setattr(sk, "TABLE_DIR", tmp_path)
    sk.load_table.cache_clear()
    sk.choose_config.cache_clear()
    sk.table_path("Fake GPU 80GB").write_text(json.dumps(table))
    try:
        assert sk.choose_config(1, 64, 128, "Fake GPU 80GB", fused=True) == SkinnyConfig(*fused)
        assert sk.choose_config(1, 64, 128, "Fake GPU 80GB") == SkinnyConfig(*plain)
        assert sk.choose_config(1, 96, 128, "Fake GPU 80GB", fused=True) == SkinnyConfig(*kernel)
        assert sk.choose_config(1, 96, 128, "Fake GPU 80GB") is None  # cuBLAS
    finally:
        sk.load_table.cache_clear()
        sk.choose_config.cache_clear()
