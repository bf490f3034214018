"""Decode attention with rotary, KV store and split merge in one launch, against the two
references in turn (rope_kv_store_ref then decode_attention_ref) and against the two kernels
it replaces."""

from __future__ import annotations

import pytest
import torch

from raylight.engine.layers.rotary import RotaryEmbedding
from raylight.engine.model_config import RopeConfig
from raylight.kernels.decode_attention import decode_attention
from raylight.kernels.decode_rope_attention import (
    decode_rope_attention,
    decode_rope_attention_ref,
)
from raylight.kernels.rope_kv_store import rope_kv_store

from .test_kernels_decode_attention import TOL, make_pool

CASES = [  # (kv_lens including the new token, heads, kv_heads, head_dim)
    ([1, 7, 33, 130], 2, 2, 64),
    ([130, 1, 65], 8, 2, 32),
    ([5], 4, 1, 64),
    ([200, 64], 6, 2, 16),  # a group of 3 query heads
]


def make_step(kv_lens: list[int], heads: int, kv_heads: int, d: int, dtype: torch.dtype,
              seed: int, pool_dtype: torch.dtype | None = None) -> dict:  # fmt: skip
    """A decode step over a pool whose last position per request is the new token: its slot
    is in ReqToToken but its K/V hold NaN until the kernel writes them."""
    k_cache, v_cache, r2t, rows = make_pool(kv_lens, kv_heads, d, torch.float32, seed)
    lens = torch.tensor(kv_lens)
    slots = torch.stack([r2t[r, n - 1].long() for r, n in zip(rows.tolist(), kv_lens)])
    k_cache[slots] = float("nan")
    v_cache[slots] = float("nan")
    pool_dtype = pool_dtype or dtype
    gen = torch.Generator().manual_seed(1000 + seed)
    b = len(kv_lens)
    qkv = torch.randn(b, (heads + 2 * kv_heads) * d, generator=gen).to(dtype)
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=1)  # views, as in a layer
    rope = RotaryEmbedding(d, RopeConfig(theta=10000.0), max_positions=max(kv_lens))
    return dict(
        positions=lens - 1, q=q.view(b, heads, d), k=k.view(b, kv_heads, d),
        v=v.view(b, kv_heads, d), cos=rope.cos, sin=rope.sin,
        k_cache=k_cache.to(pool_dtype), v_cache=v_cache.to(pool_dtype), out_slots=slots,
        req_to_token=r2t, req_rows=rows, seq_lens_kv=lens, scale=d**-0.5,
    )  # fmt: skip


def _pools(step: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return step["k_cache"].clone(), step["v_cache"].clone()


def _run(step: dict, k_cache: torch.Tensor, v_cache: torch.Tensor, **kw) -> torch.Tensor:
    args = {**step, "k_cache": k_cache, "v_cache": v_cache}
    return decode_rope_attention(**args, max_kv_len=int(step["seq_lens_kv"].max()), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("num_splits", [1, 3, 5])
def test_matches_reference(dtype: torch.dtype, case: int, num_splits: int) -> None:
    kv_lens, heads, kv_heads, d = CASES[case]
    step = make_step(kv_lens, heads, kv_heads, d, dtype, seed=case)
    k_got, v_got = _pools(step)
    counters = torch.zeros(64, dtype=torch.int32)
    got = _run(step, k_got, v_got, num_splits=num_splits, counters=counters)
    k_want, v_want = _pools(step)
    want = decode_rope_attention_ref(**{**step, "k_cache": k_want, "v_cache": v_want})
    assert torch.isfinite(got).all()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    # The pools: the new tokens' rotated k and v written, nothing else touched.
    torch.testing.assert_close(k_got, k_want, atol=atol, rtol=rtol, equal_nan=True)
    torch.testing.assert_close(v_got, v_want, atol=0, rtol=0, equal_nan=True)
    assert not counters.any(), "the last split of each group resets its counter"


@pytest.mark.parametrize(("num_splits", "merge_in_kernel"), [(1, True), (4, True), (4, False)])
def test_equals_the_two_kernels_it_replaces(
    num_splits: int, merge_in_kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same rounding points as rope_kv_store + decode_attention: the same output, to fp32
    reduction order; the merge in the kernel or in stage 2."""
    import raylight.kernels.decode_rope_attention as fused

    monkeypatch.setattr(fused, "MERGE_IN_KERNEL", merge_in_kernel)
    step = make_step([9, 70, 131], 8, 2, 64, torch.bfloat16, seed=5)
    k_a, v_a = _pools(step)
    got = _run(step, k_a, v_a, num_splits=num_splits)
    k_b, v_b = _pools(step)
    s = step
    q_rot = rope_kv_store(s["positions"], s["q"], s["k"], s["v"], s["cos"], s["sin"], k_b, v_b,
                          s["out_slots"])  # fmt: skip
    want = decode_attention(q_rot, k_b, v_b, s["req_to_token"], s["req_rows"], s["seq_lens_kv"],
                            131, s["scale"], num_splits=num_splits)  # fmt: skip
    torch.testing.assert_close(k_a, k_b, atol=1e-2, rtol=1e-2, equal_nan=True)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def test_fp8_pool() -> None:
    """Against the two kernels it replaces (the reference's fp32 math sits further from both
    than FP8 rounding allows a tight bound), with v saturating at +-448 as kv_store does."""
    step = make_step([3, 90], 4, 2, 64, torch.bfloat16, seed=9, pool_dtype=torch.float8_e4m3fn)
    step["v"].mul_(1000.0)
    k_a, v_a = _pools(step)
    got = _run(step, k_a, v_a, num_splits=2)
    k_b, v_b = _pools(step)
    s = step
    q_rot = rope_kv_store(s["positions"], s["q"], s["k"], s["v"], s["cos"], s["sin"], k_b, v_b,
                          s["out_slots"])  # fmt: skip
    want = decode_attention(q_rot, k_b, v_b, s["req_to_token"], s["req_rows"], s["seq_lens_kv"],
                            90, s["scale"], num_splits=2)  # fmt: skip
    assert torch.isfinite(got).all() and got.abs().max() > 100
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)
    for a, b in ((k_a, k_b), (v_a, v_b)):
        torch.testing.assert_close(a.float(), b.float(), atol=0, rtol=0, equal_nan=True)


def test_counters_shared_by_consecutive_launches() -> None:
    """Launches on one stream (a layer after another) reuse one counter buffer."""
    step = make_step([40, 7], 4, 2, 32, torch.float32, seed=3)
    counters = torch.zeros(8, dtype=torch.int32)
    k_cache, v_cache = _pools(step)
    first = _run(step, k_cache, v_cache, num_splits=3, counters=counters)
    again = _run(step, k_cache, v_cache, num_splits=3, counters=counters)
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_rejects_bad_arguments() -> None:
    step = make_step([5, 6], 4, 2, 32, torch.float32, seed=1)
    k_cache, v_cache = _pools(step)
    with pytest.raises(ValueError, match="counters"):
        _run(step, k_cache, v_cache, num_splits=2, counters=torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="num_splits"):
        _run(step, k_cache, v_cache, num_splits=0)
    odd = make_step([5], 2, 1, 24, torch.float32, seed=1)
    with pytest.raises(ValueError, match="power of two"):
        _run(odd, *_pools(odd))


def _on(step: dict, device: str) -> dict:
    return {n: t.to(device) if isinstance(t, torch.Tensor) else t for n, t in step.items()}


def _two_kernels(step: dict, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 max_kv_len: int) -> torch.Tensor:  # fmt: skip
    s = step
    q_rot = rope_kv_store(s["positions"], s["q"], s["k"], s["v"], s["cos"], s["sin"], k_cache,
                          v_cache, s["out_slots"])  # fmt: skip
    return decode_attention(q_rot, k_cache, v_cache, s["req_to_token"], s["req_rows"],
                            s["seq_lens_kv"], max_kv_len, s["scale"])  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("kv_lens", [[1100], [7, 4096, 1, 300] * 16])
def test_gpu_matches_the_two_kernels(pool_dtype: torch.dtype, kv_lens: list[int]) -> None:
    """Llama-3.1-8B heads, the engine's split counts (33 one-tile splits for a lone 1k-token
    request in an 8k bucket): 20 launches in a row, each equal to rope_kv_store +
    decode_attention, the counters left zero (a missed store-to-read ordering or merge race
    shows as a mismatch here)."""
    step = _on(make_step(kv_lens, 32, 8, 128, torch.bfloat16, seed=2, pool_dtype=pool_dtype),
               "cuda")  # fmt: skip
    k_b, v_b = _pools(step)
    want = _two_kernels(step, k_b, v_b, 8192)
    counters = torch.zeros(4096, dtype=torch.int32, device="cuda")
    for _ in range(20):
        k_a, v_a = _pools(step)
        got = decode_rope_attention(**{**step, "k_cache": k_a, "v_cache": v_a}, max_kv_len=8192,
                                    counters=counters)  # fmt: skip
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
    for a, b in ((k_a, k_b), (v_a, v_b)):
        torch.testing.assert_close(a.float(), b.float(), atol=0, rtol=0, equal_nan=True)
    assert not counters.any()


@pytest.mark.gpu
def test_gpu_cuda_graph_replays() -> None:
    """32 launches (a model's layers) captured in one graph, sharing one counter buffer, replay
    to the eager result again and again."""
    step = _on(make_step([1100], 32, 8, 128, torch.bfloat16, seed=4), "cuda")
    counters = torch.zeros(64, dtype=torch.int32, device="cuda")
    k_cache, v_cache = _pools(step)

    def layers() -> list[torch.Tensor]:
        args = {**step, "k_cache": k_cache, "v_cache": v_cache}
        return [decode_rope_attention(**args, max_kv_len=8192, counters=counters)
                for _ in range(32)]  # fmt: skip

    eager = layers()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layers()
    for _ in range(50):
        graph.replay()
        torch.cuda.synchronize()
        for got in captured:
            torch.testing.assert_close(got, eager[0], atol=0, rtol=0)
    assert not counters.any()
