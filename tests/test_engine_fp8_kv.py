"""An FP8 (e4m3) KV pool against an independent oracle: HF transformers whose KV cache rounds
every key and value it stores to e4m3 (saturating at +-448), as the engine's pool does. Same
greedy tokens and last-position logits (fp32 math); the bf16/fp32 pool is not the oracle,
since rounding K/V changes the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from raylight.engine.config import EngineOptions
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import run_to_completion
from .test_engine_hf import hf_greedy, make_prompts

NEW_TOKENS = 24


class Fp8RoundedCache(DynamicCache):
    """HF's dynamic cache, holding keys and values rounded to e4m3 (and attending over those)."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # type: ignore[override]
        return super().update(_fp8(key_states), _fp8(value_states), layer_idx, *args, **kwargs)


def _fp8(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-448, 448).to(torch.float8_e4m3fn).to(x.dtype)


def hf_fp8_greedy(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    return hf_greedy(model, prompt, NEW_TOKENS, Fp8RoundedCache())


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_fp8_pool_matches_hf_with_rounded_cache(tiny_models: dict[str, Path], arch: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    prompts = make_prompts(model.config.vocab_size)
    expected = [hf_fp8_greedy(model, p) for p in prompts]
    # A fixed pool: sized from free memory on a GPU, the second engine would get what the first
    # left (too few slots for one batch of every prompt).
    base = dict(dtype="float32", max_model_len=256, num_kv_slots=4096)
    opts = EngineOptions(**base, kv_cache_dtype="fp8", max_num_batched_tokens=40)
    core = create_engine_core(tiny_models[arch], opts, progress=False)
    assert all(k.dtype == torch.float8_e4m3fn for k in core.runner.k_caches)

    # Logits of the prompts' last positions, all in one (chunk-free) batch.
    wide = create_engine_core(tiny_models[arch], EngineOptions(**base, kv_cache_dtype="fp8"),
                              progress=False)  # fmt: skip
    for i, p in enumerate(prompts):
        wide.add(wide.make_request(str(i), p, SamplingParams(temperature=0, max_tokens=1)))
    batch = wide.scheduler.schedule()
    assert batch is not None and len(batch.sample_indices) == len(prompts)
    logits = wide.runner.execute(batch, keep_logits=True).logits
    torch.testing.assert_close(logits, torch.stack([e[1] for e in expected]), atol=1e-4, rtol=0)

    # Greedy tokens with chunked prefill (budget 40) and batching.
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    reqs = run_to_completion(core, prompts, params)
    assert [r.output_token_ids for r in reqs] == [e[0] for e in expected]

    # The rounding matters: an fp32 pool gives other logits (so the oracle is not vacuous).
    plain = create_engine_core(tiny_models[arch], EngineOptions(**base), progress=False)
    for i, p in enumerate(prompts):
        plain.add(plain.make_request(str(i), p, SamplingParams(temperature=0, max_tokens=1)))
    batch = plain.scheduler.schedule()
    assert batch is not None and len(batch.sample_indices) == len(prompts)
    plain_logits = plain.runner.execute(batch, keep_logits=True).logits
    assert (plain_logits - logits).abs().max() > 1e-3


def test_kv_cache_dtype_is_validated(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="kv_cache_dtype must be auto or one of"):
        create_engine_core(tiny_models["llama"], EngineOptions(kv_cache_dtype="int4"),
                           progress=False)  # fmt: skip
