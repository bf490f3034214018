"""KV scatter kernel against index_copy_ (the torch backend's store)."""

from __future__ import annotations

import pytest
import torch

from raylight.kernels.kv_store import store_kv, store_kv_ref


def _pool(slots: int, heads: int, d: int, dtype: torch.dtype, gen: torch.Generator):
    return (
        torch.randn(slots, heads, d, generator=gen).to(dtype),
        torch.randn(slots, heads, d, generator=gen).to(dtype),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens,heads,d", [(1, 1, 64), (7, 4, 64), (33, 3, 80)])
def test_matches_reference(dtype: torch.dtype, tokens: int, heads: int, d: int) -> None:
    gen = torch.Generator().manual_seed(tokens * heads + d)
    k = torch.randn(tokens, heads, d, generator=gen).to(dtype)
    v = torch.randn(tokens, heads, d, generator=gen).to(dtype)
    out_slots = torch.randperm(50, generator=gen)[:tokens] + 1  # distinct, never slot 0
    got_k, got_v = _pool(51, heads, d, dtype, gen)
    want_k, want_v = got_k.clone(), got_v.clone()
    store_kv(k, v, got_k, got_v, out_slots)
    store_kv_ref(k, v, want_k, want_v, out_slots)
    # A copy: bit-exact, and slots not written keep their old contents.
    torch.testing.assert_close(got_k, want_k, atol=0, rtol=0)
    torch.testing.assert_close(got_v, want_v, atol=0, rtol=0)


def test_strided_views_int32_slots_and_cast() -> None:
    """k, v as views into a fused qkv output; fp32 activations into a bf16 cache."""
    gen = torch.Generator().manual_seed(0)
    tokens, hq, hk, d = 5, 4, 2, 16
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, generator=gen)
    k = qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    v = qkv[:, (hq + hk) * d :].view(tokens, hk, d)
    out_slots = torch.tensor([9, 3, 12, 1, 6], dtype=torch.int32)
    got_k, got_v = _pool(13, hk, d, torch.bfloat16, gen)
    want_k, want_v = got_k.clone(), got_v.clone()
    store_kv(k, v, got_k, got_v, out_slots)
    store_kv_ref(k, v, want_k, want_v, out_slots)
    # The interpreter truncates fp32 -> bf16 where torch rounds: one bf16 ulp apart at most.
    torch.testing.assert_close(got_k, want_k, atol=0, rtol=2**-7)
    torch.testing.assert_close(got_v, want_v, atol=0, rtol=2**-7)


def test_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(3, 2, 8)
    kc, vc = _pool(10, 2, 8, torch.float32, gen)
    slots = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="out_slots: expected dtype"):
        store_kv(k, k, kc, vc, slots.float())
    with pytest.raises(ValueError, match="shapes must agree"):
        store_kv(k, k, kc, vc, slots[:2])
    with pytest.raises(ValueError, match=r"expected \[num_slots, 2, 8\]"):
        store_kv(k, k, kc[:, :1], vc[:, :1], slots)
    with pytest.raises(ValueError, match="v_cache: expected dtype"):
        store_kv(k, k, kc, vc.half(), slots)
    with pytest.raises(ValueError, match="k_cache: last dim must be contiguous"):
        store_kv(k, k, torch.randn(10, 2, 16)[..., ::2], vc, slots)


@pytest.mark.gpu
def test_gpu_large() -> None:
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(8192, 8, 128, generator=gen).bfloat16().cuda()
    v = torch.randn(8192, 8, 128, generator=gen).bfloat16().cuda()
    out_slots = (torch.randperm(100_000, generator=gen)[:8192] + 1).cuda()
    got = [torch.zeros(100_001, 8, 128, dtype=torch.bfloat16, device="cuda") for _ in "kv"]
    want = [t.clone() for t in got]
    store_kv(k, v, *got, out_slots)
    store_kv_ref(k, v, *want, out_slots)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def _fp8_inputs(tokens: int, heads: int, d: int, src_dtype: torch.dtype, device: str,
                exact: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """K (about +-300, with overflows) and V; `exact`: values e4m3 holds exactly, since the
    Triton interpreter rounds into FP8 wrongly where rounding up reaches the next power of two
    (31.6 -> 16); the GPU's conversion is tested on unrounded values."""
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(tokens, heads, d, generator=gen) * 100
    v = torch.randn(tokens, heads, d, generator=gen)
    if exact:
        k = k.clamp(-448, 448).to(torch.float8_e4m3fn).float()
        v = v.to(torch.float8_e4m3fn).float()
    k[0, 0, :4] = torch.tensor([1000.0, -5000.0, 448.0, 449.0])
    return k.to(src_dtype).to(device), v.to(src_dtype).to(device)


def _check_fp8_store(k: torch.Tensor, v: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(4)
    out_slots = (torch.randperm(k.shape[0] + 11, generator=gen)[: k.shape[0]] + 1).to(k.device)
    pool = _pool(k.shape[0] + 12, k.shape[1], k.shape[2], torch.float8_e4m3fn, gen)
    got_k, got_v = (t.to(k.device) for t in pool)
    want_k, want_v = got_k.clone(), got_v.clone()
    store_kv(k, v, got_k, got_v, out_slots)
    store_kv_ref(k, v, want_k, want_v, out_slots)
    assert want_k[out_slots[0], 0, :4].float().tolist() == [448.0, -448.0, 448.0, 448.0]
    # Bit-exact (the GPU rounds to nearest even, as torch does).
    assert torch.equal(got_k.view(torch.uint8), want_k.view(torch.uint8))
    assert torch.equal(got_v.view(torch.uint8), want_v.view(torch.uint8))


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
def test_fp8_pool_saturates(src_dtype: torch.dtype) -> None:
    """Into an FP8 (e4m3) pool: values saturate at +-448 (a plain cast of an overflow gives
    NaN), in the kernel as in the reference."""
    _check_fp8_store(*_fp8_inputs(9, 2, 48, src_dtype, "cpu", exact=True))


@pytest.mark.gpu
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
def test_fp8_pool_rounds_like_torch_on_gpu(src_dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _check_fp8_store(*_fp8_inputs(300, 8, 128, src_dtype, "cuda", exact=False))
