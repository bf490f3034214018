"""Ragged causal prefill/extend attention against its torch reference and the torch backend."""

from __future__ import annotations

import pytest
import torch

from raylight.benchmarks.gpu_bench_device import median_ms
from raylight.engine.attention.backend import AttentionMetadata
from raylight.engine.attention.torch_backend import TorchAttentionBackend
from raylight.kernels.prefill_attention import prefill_attention, prefill_attention_ref

TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def make_batch(reqs: list[tuple[int, int]], heads: int, kv_heads: int, d: int,
               dtype: torch.dtype, seed: int, device: str = "cpu") -> dict:  # fmt: skip
    """reqs: (cached, new) per request. Every request's tokens sit in randomly permuted
    slots of the pool (new ones included: they are stored before attention runs); unused
    slots, slot 0 and table entries past each request's length hold NaN / slot 0."""
    gen = torch.Generator().manual_seed(seed)
    kv_lens = [c + n for c, n in reqs]
    num_slots = sum(kv_lens) + 9
    k_cache = torch.full((num_slots, kv_heads, d), float("nan"))
    v_cache = torch.full((num_slots, kv_heads, d), float("nan"))
    rows = len(reqs) + 2
    req_to_token = torch.zeros(rows, max(kv_lens) + 4, dtype=torch.int32)
    req_rows = torch.randperm(rows, generator=gen)[: len(reqs)]
    free = torch.randperm(num_slots - 1, generator=gen) + 1
    used = 0
    for row, n in zip(req_rows.tolist(), kv_lens):
        slots = free[used : used + n]
        used += n
        req_to_token[row, :n] = slots.int()
        k_cache[slots] = torch.randn(n, kv_heads, d, generator=gen)
        v_cache[slots] = torch.randn(n, kv_heads, d, generator=gen)
    new = torch.tensor([n for _, n in reqs])
    batch = {
        "q": torch.randn(int(new.sum()), heads, d, generator=gen).to(dtype),
        "k_cache": k_cache.to(dtype),
        "v_cache": v_cache.to(dtype),
        "req_to_token": req_to_token,
        "req_rows": req_rows,
        "cu_seqlens_q": torch.cat([torch.zeros(1, dtype=torch.int64), new.cumsum(0)]),
        "seq_lens_kv": torch.tensor(kv_lens),
    }
    return {k: v.to(device) for k, v in batch.items()}


REQS = [(0, 1), (0, 7), (26, 7), (0, 33), (100, 30)]


def _check(batch: dict, max_q_len: int, dtype: torch.dtype, blocks=None,
           heads_fastest: bool = True) -> None:  # fmt: skip
    scale = batch["q"].shape[2] ** -0.5
    got = prefill_attention(**batch, max_q_len=max_q_len, scale=scale, blocks=blocks,
                            heads_fastest=heads_fastest)  # fmt: skip
    want = prefill_attention_ref(**batch, scale=scale)
    assert torch.isfinite(got).all()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (4, 1)])
def test_matches_reference(dtype: torch.dtype, heads: int, kv_heads: int) -> None:
    batch = make_batch(REQS, heads, kv_heads, 64, dtype, seed=heads)
    _check(batch, max_q_len=33, dtype=dtype)


@pytest.mark.parametrize("blocks", [(16, 16), (64, 32), (128, 128)])
@pytest.mark.parametrize("heads_fastest", [True, False])
def test_other_tilings(blocks: tuple[int, int], heads_fastest: bool) -> None:
    """The GPU tile sizes too, both grid orders, and a head_dim that is not a power of two."""
    batch = make_batch([(3, 70), (0, 130), (61, 2)], 4, 2, 48, torch.float32, seed=5)
    _check(batch, max_q_len=130, dtype=torch.float32, blocks=blocks, heads_fastest=heads_fastest)


def test_reference_matches_engine_backend() -> None:
    batch = make_batch(REQS, 4, 2, 32, torch.float32, seed=9)
    batch["k_cache"], batch["v_cache"] = (
        batch["k_cache"].nan_to_num(),
        batch["v_cache"].nan_to_num(),
    )
    meta = AttentionMetadata(
        cu_seqlens_q=batch["cu_seqlens_q"], seq_lens_kv=batch["seq_lens_kv"],
        req_rows=batch["req_rows"], req_to_token=batch["req_to_token"],
        out_slots=torch.zeros(batch["q"].shape[0], dtype=torch.int64),
        max_q_len=33, max_kv_len=130, decode_only=False,
    )  # fmt: skip
    want = TorchAttentionBackend().forward(
        batch["q"], batch["k_cache"], batch["v_cache"], meta, 0.2
    )
    torch.testing.assert_close(prefill_attention_ref(**batch, scale=0.2), want)
    torch.testing.assert_close(prefill_attention(**batch, max_q_len=33, scale=0.2), want)


def test_strided_q_and_out() -> None:
    batch = make_batch([(5, 9), (0, 4)], 2, 1, 32, torch.float32, seed=1)
    q = batch.pop("q")
    qkv = torch.randn(q.shape[0], 4 * 32)
    qkv[:, :64] = q.reshape(q.shape[0], -1)
    out = torch.full((q.shape[0], 2, 64), 3.0)[..., :32]
    got = prefill_attention(qkv[:, :64].view(-1, 2, 32), **batch, max_q_len=9, scale=0.3, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, prefill_attention_ref(q, **batch, scale=0.3))


def test_errors() -> None:
    batch = make_batch([(2, 3), (0, 4)], 4, 2, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="cu_seqlens_q: expected dtype"):
        prefill_attention(**{**batch, "cu_seqlens_q": batch["cu_seqlens_q"].float()},
                          max_q_len=4, scale=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="req_rows: expected 2 entries"):
        prefill_attention(**{**batch, "req_rows": batch["req_rows"][:1]}, max_q_len=4, scale=1.0)
    with pytest.raises(ValueError, match="v_cache: expected k_cache's shape"):
        prefill_attention(**{**batch, "v_cache": batch["v_cache"][:5]}, max_q_len=4, scale=1.0)
    with pytest.raises(ValueError, match="q: expected 3 dims"):
        prefill_attention(**{**batch, "q": batch["q"][0]}, max_q_len=4, scale=1.0)
    with pytest.raises(ValueError, match="max_q_len"):
        prefill_attention(**batch, max_q_len=-1, scale=1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_large(dtype: torch.dtype) -> None:
    reqs = [(0, 4096), (1000, 3000), (7000, 1), (0, 17), (333, 2048)]
    batch = make_batch(reqs, 32, 8, 128, dtype, seed=0, device="cuda")
    _check(batch, max_q_len=4096, dtype=dtype)


@pytest.mark.gpu
def test_gpu_throughput_16k() -> None:
    """One 16k-token causal prefill reaches >= 50% of the bf16 GEMM rate measured here."""
    t, heads, kv_heads, d = 16384, 32, 8, 128
    dev, dtype = "cuda", torch.bfloat16
    k_cache = torch.randn(t + 1, kv_heads, d, device=dev, dtype=dtype)
    v_cache = torch.randn(t + 1, kv_heads, d, device=dev, dtype=dtype)
    r2t = (torch.randperm(t, device=dev) + 1).int()[None]
    q = torch.randn(t, heads, d, device=dev, dtype=dtype)
    args = dict(
        req_to_token=r2t, req_rows=torch.zeros(1, dtype=torch.int64, device=dev),
        cu_seqlens_q=torch.tensor([0, t], device=dev), seq_lens_kv=torch.tensor([t], device=dev),
    )  # fmt: skip
    ms = median_ms(lambda: prefill_attention(q, k_cache, v_cache, **args, max_q_len=t, scale=0.08))
    flops = 2 * t * t * d * heads  # two matmuls, half of the square (causal)
    a = torch.randn(8192, 8192, device=dev, dtype=dtype)
    gemm_ms = median_ms(lambda: a @ a)
    ratio = (flops / ms) / (2 * 8192**3 / gemm_ms)
    print(f"prefill 16k {ms:.2f} ms, {flops / ms / 1e9:.0f} TFLOP/s, {ratio:.0%} of GEMM")
    assert ratio >= 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_pool_matches_reference(dtype: torch.dtype) -> None:
    """K/V read from an FP8 (e4m3) pool, converted in the kernel: to fp32 with an fp32 q, to
    fp16 (with q) for fp16 dots with a bf16 q."""
    batch = make_batch(REQS, 4, 2, 64, dtype, seed=9)
    batch["k_cache"] = batch["k_cache"].float().to(torch.float8_e4m3fn)
    batch["v_cache"] = batch["v_cache"].float().to(torch.float8_e4m3fn)
    _check(batch, max_q_len=33, dtype=dtype)
