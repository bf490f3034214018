"""The fused decode layers (engine option fuse_decode_layers: norms, residual adds and
SiLU-and-mul inside the small-batch linear kernels) on the CPU, kernels in the interpreter:
greedy output against the plain torch path (itself checked against HF transformers in
tests/test_engine_hf.py), and teacher-forced logits against the unfused kernels."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from raylight.engine.config import EngineOptions
from raylight.engine.llm import create_engine_core
from raylight.engine.models.llama import LlamaDecoderLayer
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
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])  # plain, qkv bias, q/k norms
def test_fused_decode_matches_the_torch_path(
    tiny_models: dict[str, Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    fused = LlamaDecoderLayer.forward_fused

    def counted(self, *args, **kwargs):
        calls.append(1)
        return fused(self, *args, **kwargs)

    monkeypatch.setattr(LlamaDecoderLayer, "forward_fused", counted)
    prompts = _prompts(5, seed=len(arch))
    arrivals = [0, 0, 1, 2, 2]  # decode batches of 1 to 5 rows, some beside new prompts
    want = [r.output_token_ids for r in run_to_completion(
        _core(tiny_models[arch], fast=False), prompts, GREEDY, arrivals)]  # fmt: skip
    assert not calls
    core = _core(tiny_models[arch], fuse_decode_layers=True)
    assert core.runner.model.fused_decode
    got = [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, arrivals)]
    assert got == want
    assert len(calls) >= 4 * core.config.arch.num_layers  # >= 4 steps of <= 8 rows fused
    assert_pool_empty(core)


def test_option_needs_both_kernel_families(tiny_models: dict[str, Path]) -> None:
    plain = _core(tiny_models["llama"], fast=False, fuse_decode_layers=True)
    assert not plain.runner.model.fused_decode
    # The default ("auto") fuses only where the one-row kernel was measured: not on a CPU.
    assert not _core(tiny_models["llama"]).runner.model.fused_decode


def test_auto_fuses_one_row_steps_where_the_row_kernel_was_measured(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import raylight.kernels.row_gemv as rg
    from raylight.engine.layers.linear import ColumnParallelLinear, RowParallelLinear

    model = _core(tiny_models["llama"]).runner.model
    shapes = {tuple(m.weight.shape) for m in model.modules()
              if isinstance(m, ColumnParallelLinear | RowParallelLinear)}  # fmt: skip
    table = {shape: rg.DEFAULT_CONFIG for shape in sorted(shapes)[:-1]}
    monkeypatch.setattr(rg, "load_row_table", lambda name: table if name == "cpu" else {})
    assert not _core(tiny_models["llama"]).runner.model.fused_decode  # one shape unmeasured
    table[sorted(shapes)[-1]] = rg.DEFAULT_CONFIG
    auto = _core(tiny_models["llama"]).runner.model
    assert auto.fused_decode and auto.fused_decode_max_rows == 1
    forced = _core(tiny_models["llama"], fuse_decode_layers=True).runner.model
    assert forced.fused_decode_max_rows == 8
    assert not _core(tiny_models["llama"], fuse_decode_layers=False).runner.model.fused_decode

    calls = []
    fused = LlamaDecoderLayer.forward_fused

    def counted(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return fused(self, x, *args, **kwargs)

    monkeypatch.setattr(LlamaDecoderLayer, "forward_fused", counted)
    core = _core(tiny_models["llama"])
    prompts = _prompts(2, seed=3)
    want = [r.output_token_ids for r in run_to_completion(
        _core(tiny_models["llama"], fast=False), prompts, GREEDY, [0, 2])]  # fmt: skip
    got = [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, [0, 2])]
    assert got == want
    assert calls and set(calls) == {1}  # one-row steps only (the 2-row ones run unfused)
    assert_pool_empty(core)


@pytest.mark.slow
def test_fused_decode_logits_close_to_unfused_bf16(tiny_models: dict[str, Path]) -> None:
    """Teacher-forced, bf16: every decode batch runs with and without the fusions (the same
    kernels otherwise); their logits agree to bf16 precision."""
    core = _core(tiny_models["llama"], dtype="bfloat16", fuse_decode_layers=True)
    model = core.runner.model
    for i, p in enumerate(_prompts(4, seed=5)):
        core.add(core.make_request(str(i), p, GREEDY))
    checked = 0
    while core.has_unfinished:
        batch = core.scheduler.schedule()
        assert batch is not None
        logits = core.runner.forward(batch, eager=True).float()
        if batch.decode_only:
            model.fused_decode = False
            unfused = core.runner.forward(batch, eager=True).float()
            model.fused_decode = True
            scale = unfused.abs().max().item()
            assert (logits - unfused).abs().max().item() <= 0.05 * scale + 0.05
            checked += 1
        for d in core.scheduler.update(batch, logits.argmax(-1).tolist(), None):
            if d.finish_reason is not None:
                del core.requests[d.request_id]
    assert checked >= 4
