"""L2 prefetch (kernels/l2_prefetch.py) and the engine's weight prefetch around it
(engine/layers/weight_prefetch.py). A prefetch changes no value: on the CPU it must do nothing
and the engine's output must not move; on a GPU (gpu marker) it must leave its tensor as it was
and make a later read of it faster. The sm_90 build's bulk-prefetch instruction is checked in
tests/test_kernels_sm90_compile.py."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from raylight.engine.config import EngineOptions
from raylight.engine.layers.weight_prefetch import MB, WeightPrefetch
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams
from raylight.kernels.l2_prefetch import l2_prefetch, prefetch_supported

from .engine_helpers import assert_pool_empty, run_to_completion


def test_cpu_tensors_are_left_alone() -> None:
    t = torch.randn(100, 37)
    before = t.clone()
    assert not prefetch_supported(t)
    l2_prefetch(t)
    l2_prefetch(t, nbytes=5)
    assert torch.equal(t, before)


def test_errors() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        l2_prefetch(torch.randn(8, 8).t())
    with pytest.raises(ValueError, match="multiple of 16"):
        l2_prefetch(torch.randn(8, 8), chunk=24)
    with pytest.raises(ValueError, match=">= 0 MB"):
        WeightPrefetch.from_mb(-1.0, 4.0)


def test_sizes_from_megabytes() -> None:
    assert WeightPrefetch.from_mb(0, 0) is None
    p = WeightPrefetch.from_mb(32, 0.5)
    assert p is not None and (p.attn_bytes, p.head_bytes) == (32 * MB, MB // 2)
    assert not p.active(torch.zeros(1, 16))  # CPU, not capturing


def test_engine_option_sets_the_model_and_changes_nothing_on_cpu(
    tiny_models: dict[str, Path],
) -> None:
    """On the CPU the option is accepted and inert: same greedy tokens, no slot leaks."""
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = [[5, 9, 13, 2], [7, 7, 1]]
    outs = []
    for mb in (0.0, 8.0):
        options = EngineOptions(dtype="float32", device="cpu", max_model_len=128, num_kv_slots=512,
                                l2_prefetch_attn_mb=mb, l2_prefetch_mb=mb)  # fmt: skip
        core = create_engine_core(tiny_models["llama"], options, progress=False)
        assert (core.runner.model.weight_prefetch is None) == (mb == 0)
        outs.append([r.output_token_ids for r in run_to_completion(core, prompts, params)])
        assert_pool_empty(core)
    assert outs[0] == outs[1]


def _read_us(t: torch.Tensor, flush: torch.Tensor, prefetch: bool) -> float:
    """Microseconds of one sum over `t` after evicting L2 (writing `flush`), with or without a
    prefetch and a 20 us spin first (the spin stands in for the kernels a prefetch hides
    behind)."""
    flush.fill_(1)
    if prefetch:
        l2_prefetch(t)
    torch.cuda._sleep(40_000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t.sum(dtype=torch.float32)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3


@pytest.mark.gpu
def test_gpu_prefetch_keeps_values_and_speeds_up_a_read() -> None:
    if not torch.cuda.is_available() or not prefetch_supported(torch.zeros(1, device="cuda")):
        pytest.skip("needs a CUDA GPU of sm_90 or later")
    gen = torch.Generator(device="cuda").manual_seed(0)
    odd = torch.randn(1001, 37, device="cuda", generator=gen)  # not a multiple of the chunk
    before = odd.clone()
    l2_prefetch(odd)
    l2_prefetch(odd, nbytes=999)
    l2_prefetch(odd, nbytes=10**12)
    torch.cuda.synchronize()
    assert torch.equal(odd, before)
    t = torch.randn(8 * MB // 4, device="cuda", generator=gen)  # 8 MB: well inside L2
    flush = torch.empty(512 * MB // 4, device="cuda")
    for prefetch in (False, True):  # warm-up
        _read_us(t, flush, prefetch)
    cold = statistics.median(_read_us(t, flush, False) for _ in range(15))
    warm = statistics.median(_read_us(t, flush, True) for _ in range(15))
    assert warm < 0.9 * cold, (warm, cold)
