"""Engine option decode_mlp_kernel (the post-attention norm and the MLP as one kernel,
kernels/decode_mlp.py) on the CPU, kernels in the interpreter: greedy output against the plain
torch path (itself checked against HF transformers in tests/test_engine_hf.py), with decode
batches of 1 to 5 rows beside new prompts; the kernel really runs; no KV slot leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

import raylight.engine.models.llama as llama
from raylight.engine.config import EngineOptions
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import assert_pool_empty, run_to_completion
from .test_decode_fusion import _prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _core(model: Path, **opts: object):
    options = EngineOptions(dtype="float32", device="cpu", max_model_len=256, num_kv_slots=2048,
                            max_num_seqs=8, **opts)  # fmt: skip
    return create_engine_core(model, options, progress=False)


@pytest.mark.slow
def test_decode_mlp_matches_the_torch_path(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = "llama"  # the MLP is the same in every supported architecture
    calls = []
    kernel = llama.decode_mlp

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return kernel(*args, **kwargs)

    monkeypatch.setattr(llama, "decode_mlp", counted)
    # The engine takes the kernel at batch 1 only (where it wins on the H200); here every
    # decode batch up to the kernel's 8 rows takes it, to check it beside the others.
    monkeypatch.setattr(llama, "DECODE_MLP_MAX_ROWS", 8)
    prompts = _prompts(5, seed=len(arch))
    arrivals = [0, 0, 1, 2, 2]
    want = [r.output_token_ids for r in run_to_completion(_core(tiny_models[arch]), prompts,
                                                          GREEDY, arrivals)]  # fmt: skip
    assert not calls
    core = _core(tiny_models[arch], decode_mlp_kernel=True, attention_backend="triton")
    got = [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, arrivals)]
    assert got == want
    layers = core.config.arch.num_layers
    assert len(calls) >= 4 * layers and max(calls) <= 8  # >= 4 steps of <= 8 rows
    assert_pool_empty(core)


@pytest.mark.slow
def test_decode_tail_matches_the_torch_path(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """decode_tail_kernel: each layer from o_proj to the next one's qkv as one kernel."""
    calls = []
    kernel = llama.decode_layer_tail

    def counted(*args, **kwargs):
        calls.append("next_qkv_weight" in kwargs)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(llama, "decode_layer_tail", counted)
    monkeypatch.setattr(llama, "DECODE_MLP_MAX_ROWS", 8)
    prompts = _prompts(5, seed=1)
    arrivals = [0, 0, 1, 2, 2]
    want = [r.output_token_ids for r in run_to_completion(_core(tiny_models["llama"]), prompts,
                                                          GREEDY, arrivals)]  # fmt: skip
    core = _core(tiny_models["llama"], decode_tail_kernel=True, attention_backend="triton")
    got = [r.output_token_ids for r in run_to_completion(core, prompts, GREEDY, arrivals)]
    assert got == want
    layers = core.config.arch.num_layers
    assert len(calls) >= 4 * layers  # >= 4 decode steps of <= 8 rows
    assert calls.count(False) == len(calls) // layers  # the last layer has no next qkv
    assert_pool_empty(core)
    qwen3 = _core(tiny_models["qwen3"], decode_tail_kernel=True).runner.model
    assert not qwen3.tail_kernel_fits_arch  # q/k norms: the layers' own path


def test_option_is_off_by_default_and_takes_batch_1_without_bias(
    tiny_models: dict[str, Path],
) -> None:
    import torch

    assert not any(getattr(m, "one_kernel", False)
                   for m in _core(tiny_models["llama"]).runner.model.modules())  # fmt: skip
    mlp = _core(tiny_models["llama"], decode_mlp_kernel=True).runner.model.layers[0].mlp
    hidden = mlp.down_proj.weight.shape[0]
    assert mlp.one_kernel_fits(torch.zeros(1, hidden))
    assert not mlp.one_kernel_fits(torch.zeros(2, hidden))  # batch 1 only (ENGINE_MAX_ROWS)
    assert not mlp.one_kernel_fits(torch.zeros(1, hidden, dtype=torch.float64))
    mlp.has_bias = True
    assert not mlp.one_kernel_fits(torch.zeros(1, hidden))


def test_refused_cooperative_launch_falls_back(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device where the grid cannot be resident refuses the launch: the layer runs its own
    kernels from then on, with the same result."""
    import torch

    def refused(*args, **kwargs):
        raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")

    layer = _core(tiny_models["llama"], decode_mlp_kernel=True).runner.model.layers[0]
    hidden = layer.mlp.down_proj.weight.shape[0]
    h, res = torch.randn(1, hidden), torch.randn(1, hidden)
    want = layer.mlp(layer.post_attention_layernorm(h, res)[0])
    monkeypatch.setattr(llama, "decode_mlp", refused)
    y, new_res = layer.mlp.forward_one_kernel(h, res, layer.post_attention_layernorm)
    assert not layer.mlp.one_kernel
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(new_res, h + res)
