"""Split-K decode attention against its torch reference and the engine's torch backend."""

from __future__ import annotations

import pytest
import torch

from raylight.benchmarks.gpu_bench_device import median_ms
from raylight.engine.attention.backend import AttentionMetadata
from raylight.engine.attention.torch_backend import TorchAttentionBackend
from raylight.kernels.decode_attention import (
    DecodeTiles,
    choose_num_splits,
    choose_tiles,
    decode_attention,
    decode_attention_ref,
)

TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def make_pool(kv_lens: list[int], kv_heads: int, d: int, dtype: torch.dtype, seed: int,
              device: str = "cpu") -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Caches with each request's tokens in randomly permuted slots; unused slots and slot 0
    hold NaN so a read outside a request's positions poisons the output."""
    gen = torch.Generator().manual_seed(seed)
    num_slots = sum(kv_lens) + 9
    k_cache = torch.full((num_slots, kv_heads, d), float("nan"))
    v_cache = torch.full((num_slots, kv_heads, d), float("nan"))
    rows = len(kv_lens) + 3
    max_len = max(kv_lens) + 5
    req_to_token = torch.zeros(rows, max_len, dtype=torch.int32)  # unused entries -> slot 0
    req_rows = torch.randperm(rows, generator=gen)[: len(kv_lens)]
    free = torch.randperm(num_slots - 1, generator=gen) + 1
    used = 0
    for row, n in zip(req_rows.tolist(), kv_lens):
        slots = free[used : used + n]
        used += n
        req_to_token[row, :n] = slots.int()
        k_cache[slots] = torch.randn(n, kv_heads, d, generator=gen)
        v_cache[slots] = torch.randn(n, kv_heads, d, generator=gen)
    tensors = (k_cache.to(dtype), v_cache.to(dtype), req_to_token, req_rows)
    return tuple(t.to(device) for t in tensors)


CASES = [  # (kv_lens, heads, kv_heads)
    ([1, 7, 33, 130], 2, 2),
    ([130, 1, 65], 8, 2),
    ([5], 4, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("num_splits", [1, 3])
def test_matches_reference(dtype: torch.dtype, case: int, num_splits: int) -> None:
    kv_lens, heads, kv_heads = CASES[case]
    d = 64
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, dtype, seed=case)
    gen = torch.Generator().manual_seed(100 + case)
    q = torch.randn(len(kv_lens), heads, d, generator=gen).to(dtype)
    lens = torch.tensor(kv_lens)
    scale = d**-0.5
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, max(kv_lens), scale,
                           num_splits=num_splits)  # fmt: skip
    want = decode_attention_ref(q, k_cache, v_cache, r2t, rows, lens, scale)
    assert torch.isfinite(got).all()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_reference_matches_engine_backend() -> None:
    kv_lens, heads, kv_heads, d = [3, 40, 17], 8, 2, 32
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, torch.float32, seed=7)
    k_cache, v_cache = k_cache.nan_to_num(), v_cache.nan_to_num()  # SDPA reads padding slots
    q = torch.randn(len(kv_lens), heads, d, generator=torch.Generator().manual_seed(1))
    lens = torch.tensor(kv_lens)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(len(kv_lens) + 1), seq_lens_kv=lens, req_rows=rows,
        req_to_token=r2t, out_slots=torch.zeros(len(kv_lens), dtype=torch.int64),
        max_q_len=1, max_kv_len=max(kv_lens), decode_only=True,
    )  # fmt: skip
    want = TorchAttentionBackend().forward(q, k_cache, v_cache, meta, 0.3)
    torch.testing.assert_close(decode_attention_ref(q, k_cache, v_cache, r2t, rows, lens, 0.3),
                               want, atol=1e-5, rtol=1e-5)  # fmt: skip
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, max(kv_lens), 0.3)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_padded_lane_and_strided_q_out() -> None:
    """A CUDA-graph padding lane (seq_len 0) yields zeros; q and out may be strided views."""
    kv_lens, heads, kv_heads, d = [9, 70], 4, 2, 64
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, torch.float32, seed=3)
    rows = torch.cat([rows, torch.tensor([0])])
    lens = torch.tensor(kv_lens + [0])
    qkv = torch.randn(3, (heads + 2 * kv_heads) * d, generator=torch.Generator().manual_seed(2))
    q = qkv[:, : heads * d].view(3, heads, d)
    out = torch.full((3, heads, 2 * d), 5.0)[..., :d]
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, 128, 0.125, out=out)
    assert got.data_ptr() == out.data_ptr()
    want = decode_attention_ref(q, k_cache, v_cache, r2t, rows, lens, 0.125)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    assert (out[2] == 0).all()


def test_choose_num_splits() -> None:
    assert choose_num_splits(1, 8, 100, 132) == 1  # short context: one split
    assert choose_num_splits(1, 8, 32768, 132) >= 16  # one long request: many splits
    assert choose_num_splits(512, 8, 4096, 132) == 1  # big batch fills the GPU already
    assert choose_num_splits(64, 8, 4096, 132) == 1  # measured best on an H100
    assert choose_num_splits(1, 8, 1024, 132) == 8  # lone short request: 128 positions each


def test_errors() -> None:
    k_cache, v_cache, r2t, rows = make_pool([4, 6], 2, 16, torch.float32, seed=0)
    q = torch.randn(2, 4, 16)
    lens = torch.tensor([4, 6])
    args = (k_cache, v_cache, r2t, rows, lens, 8, 0.25)
    with pytest.raises(ValueError, match="k_cache: expected dtype"):
        decode_attention(q.half(), *args)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        decode_attention(torch.randn(2, 3, 16), *args)
    with pytest.raises(ValueError, match="head_dim"):
        decode_attention(torch.randn(2, 4, 8), *args)
    with pytest.raises(ValueError, match="req_to_token: expected dtype"):
        decode_attention(q, k_cache, v_cache, r2t.long(), rows, lens, 8, 0.25)
    with pytest.raises(ValueError, match="seq_lens_kv: expected 2 entries"):
        decode_attention(q, k_cache, v_cache, r2t, rows, lens[:1], 8, 0.25)
    with pytest.raises(ValueError, match="out: expected shape"):
        decode_attention(q, *args, out=torch.empty(2, 4, 8))
    with pytest.raises(ValueError, match="num_splits"):
        decode_attention(q, *args, num_splits=0)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,d", [(32, 8, 128), (8, 8, 64)])
def test_gpu_large(heads: int, kv_heads: int, d: int) -> None:
    gen = torch.Generator().manual_seed(0)
    kv_lens = torch.randint(1, 4096, (64,), generator=gen).tolist()
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, torch.bfloat16, 0, "cuda")
    q = torch.randn(64, heads, d, generator=gen).bfloat16().cuda()
    lens = torch.tensor(kv_lens, device="cuda")
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, 4096, d**-0.5)
    want = decode_attention_ref(q, k_cache, v_cache, r2t, rows, lens, d**-0.5)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_bandwidth_batch64_ctx4k() -> None:
    """Reads K/V at >= 80% of the copy bandwidth measured in the same run (slots scattered)."""
    batch, ctx, heads, kv_heads, d = 64, 4096, 32, 8, 128
    dev, dtype = "cuda", torch.bfloat16
    num_slots = batch * ctx + 1
    k_cache = torch.randn(num_slots, kv_heads, d, device=dev, dtype=dtype)
    v_cache = torch.randn(num_slots, kv_heads, d, device=dev, dtype=dtype)
    r2t = (torch.randperm(num_slots - 1, device=dev) + 1).int().view(batch, ctx)
    rows = torch.arange(batch, device=dev)
    lens = torch.full((batch,), ctx, device=dev)
    q = torch.randn(batch, heads, d, device=dev, dtype=dtype)
    ms = median_ms(lambda: decode_attention(q, k_cache, v_cache, r2t, rows, lens, ctx, 0.08))
    kv_bytes = 2 * k_cache.numel() * k_cache.element_size()
    src = torch.empty(kv_bytes // 2, dtype=torch.int16, device=dev)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    ratio = (kv_bytes / ms) / (2 * kv_bytes / copy_ms)  # copy moves its bytes twice
    print(f"decode {ms:.3f} ms, {kv_bytes / ms / 1e9:.2f} TB/s, {ratio:.0%} of copy bandwidth")
    assert ratio >= 0.8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_fp8_pool_matches_reference(dtype: torch.dtype, num_splits: int) -> None:
    """K/V read from an FP8 (e4m3) pool and converted to q's dtype in the kernel."""
    kv_lens, heads, kv_heads = CASES[1]
    d = 64
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, torch.float8_e4m3fn, seed=4)
    q = torch.randn(len(kv_lens), heads, d, generator=torch.Generator().manual_seed(4)).to(dtype)
    lens = torch.tensor(kv_lens)
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, max(kv_lens), d**-0.5,
                           num_splits=num_splits)  # fmt: skip
    want = decode_attention_ref(q, k_cache, v_cache, r2t, rows, lens, d**-0.5)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=TOL[dtype][0], rtol=TOL[dtype][1])


@pytest.mark.parametrize(
    "tiles",
    [DecodeTiles(block_n=128, num_warps=8, num_stages=2), DecodeTiles(fp16_dot=True),
     DecodeTiles(block_n=32, num_stages=4, fp16_dot=True),
     DecodeTiles(fp16_dot=True, fp8_v_pairs=True),
     DecodeTiles(block_n=32, num_warps=8, fp16_dot=True, fp8_v_pairs=True),
     choose_tiles(torch.float8_e4m3fn)],
)  # fmt: skip
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_launch_settings_match_reference(tiles: DecodeTiles, kv_dtype: torch.dtype) -> None:
    """Every stage-1 variant kernel_sweep.py times gives the reference's output (fp16_dot only
    changes FP8 pools)."""
    kv_lens, heads, kv_heads = [1, 70, 200], 8, 2
    d = 64
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, kv_dtype, seed=5)
    q = torch.randn(len(kv_lens), heads, d, generator=torch.Generator().manual_seed(5)).bfloat16()
    lens = torch.tensor(kv_lens)
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, max(kv_lens), d**-0.5,
                           num_splits=2, tiles=tiles)  # fmt: skip
    want = decode_attention_ref(q, k_cache, v_cache, r2t, rows, lens, d**-0.5)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_fp8_v_pairs_read_every_e4m3_value_exactly() -> None:
    """One position per request: the output is that position's V, so every finite e4m3 value
    (subnormals and signs included) must come back exactly through the int16-pair split."""
    every = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    finite = every[torch.isfinite(every.float())]  # 254 values (0x7F and 0xFF are NaN)
    d, kv_heads, heads = 32, 1, 2
    batch = -(-len(finite) // d)
    v = torch.zeros(batch * d, dtype=torch.float8_e4m3fn)
    v[: len(finite)] = finite
    v_cache = torch.cat([torch.zeros(1, kv_heads, d, dtype=v.dtype), v.view(batch, kv_heads, d)])
    k_cache = torch.zeros_like(v_cache)
    r2t = torch.arange(1, batch + 1, dtype=torch.int32)[:, None]
    rows, lens = torch.arange(batch), torch.ones(batch, dtype=torch.int64)
    q = torch.randn(batch, heads, d).bfloat16()
    got = decode_attention(q, k_cache, v_cache, r2t, rows, lens, 1, 0.1, num_splits=1,
                           tiles=DecodeTiles(fp16_dot=True, fp8_v_pairs=True))  # fmt: skip
    want = v_cache[1:].float().expand(batch, heads, d)
    assert torch.equal(got.float(), want)
