"""Greedy output and logits identical to HF transformers on every supported architecture."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from raylight.engine.config import EngineOptions
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams

from .conftest import ARCHS
from .engine_helpers import run_to_completion, shared_prefix_prompts

NEW_TOKENS = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def make_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 5, 17, 33, 64, 9, 48, 120]  # different lengths, some longer than a chunk
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


@torch.no_grad()
def hf_greedy(
    model: torch.nn.Module, prompt: list[int], n: int, cache: object | None = None
) -> tuple[list[int], torch.Tensor]:
    """HF's model with its own KV cache (or `cache`, an HF Cache), argmax each step, no
    end-of-sequence (= ignore_eos). Returns the tokens and the prompt's last-position logits."""
    out = model(torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    first_logits = out.logits[0, -1]
    tokens: list[int] = []
    for _ in range(n):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(
            torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True
        )
    return tokens, first_logits


@pytest.fixture(scope="module")
def hf_reference(tiny_models: dict[str, Path]) -> dict[str, tuple[list, list, list]]:
    """arch -> (prompts, HF greedy continuations, HF last-position logits)."""
    refs = {}
    for arch, path in tiny_models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        prompts = make_prompts(model.config.vocab_size)
        outs, logits = [], []
        for p in prompts:
            out, last_logits = hf_greedy(model, p, NEW_TOKENS)
            outs.append(out)
            logits.append(last_logits)
        refs[arch] = (prompts, outs, logits)
    return refs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "mode, budget, arrivals",
    [
        ("together", 4096, None),
        ("chunked", 13, None),  # every prompt longer than 13 tokens is split across steps
        ("staggered", 64, [0, 0, 3, 7, 8, 20, 21, 40]),
    ],
)
def test_greedy_tokens_match_hf(
    tiny_models: dict[str, Path],
    hf_reference: dict,
    arch: str,
    mode: str,
    budget: int,
    arrivals: list[int] | None,
) -> None:
    prompts, expected, _ = hf_reference[arch]
    opts = EngineOptions(
        dtype="float32", max_model_len=512, max_num_batched_tokens=budget, max_num_seqs=8
    )
    core = create_engine_core(tiny_models[arch], opts, progress=False)
    reqs = run_to_completion(core, prompts, GREEDY, arrivals)
    for i, (req, ref) in enumerate(zip(reqs, expected)):
        assert req.output_token_ids == ref, f"{arch}/{mode}: prompt {i} differs from HF"
        assert req.finish_reason is not None and req.finish_reason.value == "length"


@pytest.mark.parametrize("arch", ARCHS)
def test_last_position_logits_match_hf(
    tiny_models: dict[str, Path], hf_reference: dict, arch: str
) -> None:
    prompts, _, hf_logits = hf_reference[arch]
    opts = EngineOptions(dtype="float32", max_model_len=512)
    core = create_engine_core(tiny_models[arch], opts, progress=False)
    for i, p in enumerate(prompts):
        core.add(core.make_request(str(i), p, SamplingParams(temperature=0, max_tokens=1)))
    batch = core.scheduler.schedule()
    assert batch is not None and len(batch.sample_indices) == len(prompts)  # one mixed batch
    result = core.runner.execute(batch, keep_logits=True)
    assert result.logits is not None
    expected = torch.stack(hf_logits)
    torch.testing.assert_close(result.logits, expected, atol=1e-4, rtol=0)
    core.scheduler.update(batch, result.token_ids, result.logprobs)
    assert core.scheduler.num_free_slots == core.scheduler.allocator.capacity


def test_preemption_under_a_small_pool_keeps_hf_output(
    tiny_models: dict[str, Path], hf_reference: dict
) -> None:
    prompts, expected, _ = hf_reference["llama"]
    # 256 slots cannot hold 8 requests of up to 184 tokens: the aggressive policy preempts.
    opts = EngineOptions(
        dtype="float32",
        max_model_len=256,
        num_kv_slots=257,
        admission_policy="aggressive",
        max_num_seqs=8,
    )
    core = create_engine_core(tiny_models["llama"], opts, progress=False)
    reqs = run_to_completion(core, prompts, GREEDY)
    assert core.scheduler.num_preemptions > 0
    for req, ref in zip(reqs, expected):
        assert req.output_token_ids == ref


def test_tensor_parallel_two_ranks_matches_one(tiny_models: dict[str, Path]) -> None:
    """TP=2 with the prefix cache, async scheduling and the Triton kernels (interpreted: the
    one-launch decode attention over each rank's heads) equals TP=1 with none of them. The
    prompts share prefixes and arrive over time, so the worker rank's device table must receive
    the reused table entries through the batch broadcast, and its steps scheduled ahead their
    input ids from rank 0 (one TP engine per test process: its process group is global)."""
    prompts = make_prompts(2048, seed=1)[:4] + shared_prefix_prompts(2048, seed=1)
    arrivals = [0, 0, 0, 0, 0, 0, 5, 9, 13, 17, 21, 25]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outs = []
    for tp, on in ((1, False), (2, True)):
        opts = EngineOptions(
            dtype="float32", max_model_len=256, tensor_parallel_size=tp,
            max_num_batched_tokens=40, enable_prefix_caching=on, async_scheduling=on,
            attention_backend="triton" if on else "torch", fused_kernels=on,
        )  # fmt: skip
        core = create_engine_core(tiny_models["qwen2"], opts, progress=False)
        reqs = run_to_completion(core, prompts, params, arrivals)
        outs.append([r.output_token_ids for r in reqs])
    assert outs[0] == outs[1]
    rank0 = core.runner  # decode steps took kernels/decode_rope_attention.py
    assert rank0.backend.fuses_rope(rank0.config.arch.head_dim) and rank0.model.rope.fused
    assert core.num_scheduled_ahead > 20
    assert sum(r.num_cached_tokens for r in reqs) > 100  # the TP=2 run hit the cache
    assert np.array(outs[0]).std() > 0  # not a degenerate constant output
