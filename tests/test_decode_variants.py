"""benchmarks/decode_variants.py's ablations change the step while active and leave the model
as it was afterwards (the timings run on the GPU; this checks the patching on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raylight.benchmarks.decode_variants import variant
from raylight.engine.layers.attention import ForwardContext
from raylight.engine.llm import LLM


def _hidden(llm: LLM, backend) -> torch.Tensor:
    """The model's forward on two tokens without attention state (the ablations that keep
    attention are not called here)."""
    model = llm.core.runner.model
    ids, pos = torch.tensor([3, 5]), torch.tensor([0, 1])
    ctx = ForwardContext(None, backend, [], [])
    with torch.inference_mode():
        return model(ids, pos, ctx)


@pytest.mark.parametrize("name", ["no_attention", "linears_only"])
def test_ablations_apply_and_undo(tiny_models: dict[str, Path], name: str) -> None:
    llm = LLM(tiny_models["llama"], dtype="float32", device="cpu", max_model_len=64,
              progress=False)  # fmt: skip
    runner = llm.core.runner
    with variant("no_attention", runner) as backend:
        before = _hidden(llm, backend)
    with variant(name, runner) as backend:
        during = _hidden(llm, backend)
    with variant("no_attention", runner) as backend:
        after = _hidden(llm, backend)
    assert torch.equal(before, after)
    assert (name == "no_attention") == torch.equal(before, during)
    assert not any("forward" in vars(m) for m in runner.model.modules())
    with pytest.raises(ValueError, match="unknown variant"), variant("bogus", runner):
        pass


def test_launch_setting_variants_are_undone(tiny_models: dict[str, Path]) -> None:
    from raylight.kernels import decode_attention, rmsnorm

    llm = LLM(tiny_models["llama"], dtype="float32", device="cpu", max_model_len=64,
              progress=False)  # fmt: skip
    choose, warps = decode_attention.choose_num_splits, rmsnorm.MAX_WARPS
    with variant("splits_8", llm.core.runner):
        assert decode_attention.choose_num_splits(1, 8, 8192, 132) == 8
    with variant("norm_warps_2", llm.core.runner):
        assert rmsnorm.MAX_WARPS == 2
    assert decode_attention.choose_num_splits is choose and rmsnorm.MAX_WARPS == warps


def test_kernel_variants_restore_the_engine_settings(tiny_models: dict[str, Path]) -> None:
    """fused / pdl switch the model's flags for the variant and put back the engine's own
    (here: the CPU defaults, kernels off), not the CUDA ones."""
    llm = LLM(tiny_models["llama"], dtype="float32", device="cpu", max_model_len=64,
              progress=False)  # fmt: skip
    runner = llm.core.runner
    model = runner.model
    linear = model.layers[0].mlp.down_proj

    def flags() -> tuple:
        return model.fused_decode, linear.skinny, linear.pdl

    before = flags()
    assert before == (False, False, False)
    with variant("pdl", runner):
        assert linear.pdl
    with variant("fused", runner):
        assert not model.fused_decode  # needs the kernels, which the CPU engine has off
    assert flags() == before


def test_unfused_attention_variant_is_undone(tiny_models: dict[str, Path]) -> None:
    llm = LLM(tiny_models["llama"], dtype="float32", device="cpu", max_model_len=64,
              attention_backend="triton", progress=False)  # fmt: skip
    backend = llm.core.runner.backend
    assert backend.fuse_decode_rope  # the engine default
    with variant("unfused_attention", llm.core.runner) as used:
        assert used is backend and not backend.fuse_decode_rope
    assert backend.fuse_decode_rope


def test_combined_variant_parts_apply_and_are_undone(tiny_models: dict[str, Path]) -> None:
    from raylight.kernels import decode_attention, decode_rope_attention

    llm = LLM(tiny_models["llama"], dtype="float32", device="cpu", max_model_len=64,
              attention_backend="triton", progress=False)  # fmt: skip
    tile, choose = decode_rope_attention.MERGE_TILE, decode_attention.choose_tiles
    with variant("merge_tile_4096+tiles_32_8_2+unfused_attention", llm.core.runner) as backend:
        assert decode_rope_attention.MERGE_TILE == 4096 and not backend.fuse_decode_rope
        assert decode_attention.choose_tiles(None) == decode_attention.DecodeTiles(32, 8, 2)
    assert decode_rope_attention.MERGE_TILE == tile and decode_attention.choose_tiles is choose
    assert backend.fuse_decode_rope
    with pytest.raises(ValueError, match="unknown variant"):
        with variant("plain+bogus", llm.core.runner):
            pass
