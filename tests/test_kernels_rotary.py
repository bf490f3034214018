"""Rotary kernel against its torch reference and the engine's RotaryEmbedding (Llama-3 cache)."""

from __future__ import annotations

import pytest
import torch

from raylight.engine.layers.rotary import RotaryEmbedding
from raylight.engine.model_config import RopeConfig
from raylight.kernels.rotary import rotary_embedding, rotary_embedding_ref

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}
LLAMA3 = RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 64)


def _inputs(tokens: int, hq: int, hk: int, d: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(d, LLAMA3, max_positions=300)
    pos = torch.randint(0, 300, (tokens,), generator=gen)
    q = torch.randn(tokens, hq, d, generator=gen).to(dtype)
    k = torch.randn(tokens, hk, d, generator=gen).to(dtype)
    return rope, pos, q, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens,hq,hk,d", [(1, 1, 1, 2), (7, 4, 1, 64), (5, 12, 3, 96)])
def test_matches_reference(dtype: torch.dtype, tokens: int, hq: int, hk: int, d: int) -> None:
    rope, pos, q, k = _inputs(tokens, hq, hk, d, dtype, seed=tokens + d)
    got_q, got_k = rotary_embedding(pos, q, k, rope.cos, rope.sin)
    want_q, want_k = rotary_embedding_ref(pos, q, k, rope.cos, rope.sin)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got_q, want_q, atol=atol, rtol=rtol)
    torch.testing.assert_close(got_k, want_k, atol=atol, rtol=rtol)
    # The reference agrees with the engine layer (which computes in the input dtype).
    eng_q, eng_k = rope(pos, q, k)
    torch.testing.assert_close(want_q, eng_q, atol=4 * atol, rtol=4 * rtol)
    torch.testing.assert_close(want_k, eng_k, atol=4 * atol, rtol=4 * rtol)


def test_inplace_on_fused_qkv_view() -> None:
    """q and k as strided views into one [T, (Hq + 2 Hk) * D] projection output."""
    tokens, hq, hk, d = 6, 4, 2, 32
    rope, pos, _, _ = _inputs(tokens, hq, hk, d, torch.float32, seed=5)
    qkv = torch.randn(tokens, (hq + 2 * hk) * d)
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    v_before = qkv[:, (hq + hk) * d :].clone()
    want_q, want_k = rotary_embedding_ref(pos.int(), q, k, rope.cos, rope.sin)
    got_q, got_k = rotary_embedding(pos.int(), q, k, rope.cos, rope.sin, inplace=True)
    assert got_q.data_ptr() == q.data_ptr()
    torch.testing.assert_close(q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, want_k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qkv[:, (hq + hk) * d :], v_before, atol=0, rtol=0)


def test_errors() -> None:
    rope, pos, q, k = _inputs(3, 2, 1, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="positions: expected dtype"):
        rotary_embedding(pos.float(), q, k, rope.cos, rope.sin)
    with pytest.raises(ValueError, match="k: expected dtype"):
        rotary_embedding(pos, q, k.half(), rope.cos, rope.sin)
    with pytest.raises(ValueError, match="token counts"):
        rotary_embedding(pos[:2], q, k, rope.cos, rope.sin)
    with pytest.raises(ValueError, match="cos: expected contiguous"):
        rotary_embedding(pos, q, k, rope.cos[:, :4], rope.sin)
    with pytest.raises(ValueError, match="cos: expected dtype"):
        rotary_embedding(pos, q, k, rope.cos.double(), rope.sin)
    with pytest.raises(ValueError, match="q: last dim must be contiguous"):
        rotary_embedding(pos, torch.randn(3, 2, 32)[..., ::2], k, rope.cos, rope.sin)


@pytest.mark.gpu
def test_gpu_large() -> None:
    rope, pos, q, k = _inputs(8192, 32, 8, 128, torch.bfloat16, seed=1)
    args = (pos.cuda(), q.cuda(), k.cuda(), rope.cos.cuda(), rope.sin.cuda())
    for got, want in zip(rotary_embedding(*args), rotary_embedding_ref(*args)):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
