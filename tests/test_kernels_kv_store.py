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
