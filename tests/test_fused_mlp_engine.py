"""The one-kernel MLP in the engine (engine option fused_mlp, kernels/fused_mlp.py) on the CPU,
kernels in the interpreter: greedy output against the plain torch path (itself checked against
HF transformers in tests/test_engine_hf.py), and teacher-forced bf16 logits against the
unfused kernels."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from raylight.engine.config import EngineOptions
from raylight.engine.llm import create_engine_core
from raylight.engine.models.llama import LlamaMLP
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import assert_pool_empty, run_to_completion

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _core(model: Path, dtype: str = "float32", fast: bool = True, **opts: object):
    kernels = {"attention_backend": "triton", "fused_kernels": True, "skinny_linear": True}
    options = EngineOptions(dtype=dtype, device="cpu", max_model_len=256, num_kv_slots=2048,
                            max_num_seqs=8, **(kernels if fast else {}), **opts)  # fmt: skip
    return create_engine_core(model, options, progress=False)


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(200) for _ in range(rng.randrange(3, 20))] for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # plain, q/k norms
def test_fused_mlp_matches_the_torch_path(
    tiny_models: dict[str, Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = []
    one_kernel = LlamaMLP.forward_one_kernel

    def counted(self, h, *args, **kwargs):
        rows.append(h.shape[0])
        return one_kernel(self, h, *args, **kwargs)

    monkeypatch.setattr(LlamaMLP, "forward_one_kernel", counted)
    prompts = _prompts(6, seed=len(arch))
    arrivals = [0, 0, 1, 2, 2, 3]  # decode batches of 1 to 6 rows, some beside new prompts
    want = [r.output_token_ids for r in run_to_completion(
        _core(tiny_models[arch], fast=False), prompts, GREEDY, arrivals)]  # fmt: skip
    assert not rows
    core = _core(tiny_models[arch], fused_mlp=True)
    assert core.runner.model.fused_mlp
    got = [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, arrivals)]
    assert got == want
    assert rows and max(rows) <= 4  # batches above 4 rows (and prefills) took the plain path
    assert 1 in rows and len(rows) >= 3 * core.config.arch.num_layers
    assert_pool_empty(core)


def test_option_needs_the_fused_kernels(tiny_models: dict[str, Path]) -> None:
    assert not _core(tiny_models["llama"], fast=False, fused_mlp=True).runner.model.fused_mlp
    assert not _core(tiny_models["llama"]).runner.model.fused_mlp  # off by default


@pytest.mark.slow
def test_fused_mlp_logits_close_to_unfused_bf16(tiny_models: dict[str, Path]) -> None:
    """Teacher-forced, bf16: every decode batch runs with and without the one-kernel MLP (the
    same kernels otherwise); their logits agree to bf16 precision."""
    core = _core(tiny_models["llama"], dtype="bfloat16", fused_mlp=True)
    model = core.runner.model
    for i, p in enumerate(_prompts(3, seed=5)):
        core.add(core.make_request(str(i), p, GREEDY))
    checked = 0
    while core.has_unfinished:
        batch = core.scheduler.schedule()
        assert batch is not None
        logits = core.runner.forward(batch, eager=True).float()
        if batch.decode_only:
            model.fused_mlp = False
            unfused = core.runner.forward(batch, eager=True).float()
            model.fused_mlp = True
            scale = unfused.abs().max().item()
            assert (logits - unfused).abs().max().item() <= 0.05 * scale + 0.05
            checked += 1
        for d in core.scheduler.update(batch, logits.argmax(-1).tolist(), None):
            if d.finish_reason is not None:
                del core.requests[d.request_id]
    assert checked >= 4
