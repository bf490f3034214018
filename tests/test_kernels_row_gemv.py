"""The one-wave batch-1 linear kernel (kernels/row_gemv.py) against its torch reference and a
float64 product, and the layers' dispatch to it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import raylight.kernels.row_gemv as rg
from raylight.engine.layers.linear import linear
from raylight.kernels.row_gemv import RowGemvConfig, row_gemv, row_gemv_ref

# Several row blocks per program, one program per row block (programs left idle), a K tile
# wider than K, one without software pipelining.
CONFIGS = [
    RowGemvConfig(4, 64, 2, 1, 1),
    RowGemvConfig(8, 32, 3, 2, 16),
    RowGemvConfig(2, 256, 2, 1, 2),
    RowGemvConfig(16, 64, 1, 4, 1),
]
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(37, 100), (64, 256), (50, 1030), (16, 16), (3, 64)])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["strips", "idle", "wide-k", "nostage"])
def test_matches_reference(dtype, n: int, k: int, cfg: RowGemvConfig) -> None:
    gen = torch.Generator().manual_seed(n * 13 + k)
    x = torch.randn(1, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    atol, rtol = TOL[dtype]
    for bias in (None, b):
        y = row_gemv(x, w, bias, cfg)
        assert y.shape == (1, n) and y.dtype == dtype
        torch.testing.assert_close(y, row_gemv_ref(x, w, bias), atol=atol, rtol=rtol)
    exact = (x.double() @ w.double().t() + b.double()).to(dtype)
    torch.testing.assert_close(row_gemv_ref(x, w, b), exact, atol=atol, rtol=rtol)


def test_strided_weight_rows_and_empty() -> None:
    base = torch.randn(24, 80)
    w = base[:, :64]  # row stride 80
    x = torch.randn(1, 64)
    torch.testing.assert_close(row_gemv(x, w), row_gemv_ref(x, w), atol=1e-4, rtol=1e-4)
    assert row_gemv(torch.randn(1, 8), torch.randn(0, 8)).shape == (1, 0)
    b = torch.randn(5)
    torch.testing.assert_close(row_gemv(torch.randn(1, 0), torch.randn(5, 0), b), b[None])


def test_errors() -> None:
    with pytest.raises(ValueError, match="one row"):
        row_gemv(torch.randn(2, 16), torch.randn(4, 16))
    with pytest.raises(ValueError, match="K, the input features"):
        row_gemv(torch.randn(1, 16), torch.randn(4, 15))
    with pytest.raises(ValueError, match="weight: expected dtype"):
        row_gemv(torch.randn(1, 16), torch.randn(4, 16, dtype=torch.float16))
    with pytest.raises(ValueError, match="weight: last dim must be contiguous"):
        row_gemv(torch.randn(1, 16), torch.randn(16, 4).t())
    with pytest.raises(ValueError, match="bias: dim 0"):
        row_gemv(torch.randn(1, 16), torch.randn(4, 16), torch.randn(5))


def test_layers_use_it_for_one_row_of_a_measured_shape(monkeypatch) -> None:
    """`linear` takes the kernel only with `skinny`, one row and a measured (device, shape)."""
    import raylight.engine.layers.linear as linear_mod

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return row_gemv(*args, **kwargs)

    monkeypatch.setattr(linear_mod, "row_gemv", counting)
    x = torch.randn(2, 32)
    w, b = torch.randn(48, 32), torch.randn(48)
    want = F.linear(x, w, b)
    linear(x[:1], w, b, skinny=True)
    assert calls == []  # not measured on this device: the other kernels
    table = {(48, 32): RowGemvConfig(4, 16, 2, 1, 2)}
    monkeypatch.setattr(rg, "load_row_table", lambda name: table if name == "cpu" else {})
    torch.testing.assert_close(linear(x[:1], w, b, skinny=True), want[:1], atol=1e-4, rtol=1e-4)
    assert calls == [1]
    torch.testing.assert_close(linear(x[:1], w, b, skinny=False), want[:1])
    linear(x, w, b, skinny=True)  # two rows
    assert calls == [1]


def test_tables(tmp_path, monkeypatch) -> None:
    """The committed H200 table holds the four Llama-3.1-8B layer shapes; a device's table is
    found by its name; devices never swept have none."""
    h200 = rg.load_row_table("NVIDIA H200")
    assert set(h200) == {(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)}
    assert all(isinstance(c, RowGemvConfig) and c.progs_per_sm >= 1 for c in h200.values())
    monkeypatch.setattr(rg, "TABLE_DIR", tmp_path)
    rg.load_row_table.cache_clear()
    try:
        entries = [{"n": 64, "k": 128, "config": [4, 64, 2, 1, 3]}]
        rg.table_path("Fake GPU 80GB").write_text(json.dumps({"entries": entries}))
        assert rg.table_path("Fake GPU 80GB").name == "Fake_GPU_80GB.json"
        assert rg.load_row_table("Fake GPU 80GB") == {(64, 128): RowGemvConfig(4, 64, 2, 1, 3)}
        assert rg.load_row_table("Other GPU") == {}
        assert rg.choose_row_config(64, 128, torch.device("cpu")) is None
    finally:
        rg.load_row_table.cache_clear()


def test_probe_writes_the_table_the_kernel_reads(tmp_path, monkeypatch) -> None:
    from raylight.benchmarks.gemv_chain_probe import write_table

    monkeypatch.setattr(rg, "TABLE_DIR", tmp_path)
    rg.load_row_table.cache_clear()
    swept = {"qkv": [{"config": [8, 512, 4, 4, 3], "us": 13.9}, {"config": "engine", "us": 15.8}],
             "o": [{"config": "engine", "us": 11.0}, {"config": [4, 1024, 3, 1, 4], "us": 11.2}]}
    try:
        write_table(swept, "Fake GPU", ["--sweep", "--write-table"])
        # o: the layers' kernel was faster, so no entry
        assert rg.load_row_table("Fake GPU") == {(6144, 4096): RowGemvConfig(8, 512, 4, 4, 3)}
    finally:
        rg.load_row_table.cache_clear()


def test_probe_sweep_times_the_shipped_kernel(monkeypatch) -> None:
    """gemv_chain_probe's sweep on the CPU with a stand-in timer (its CUDA graphs need a GPU):
    every setting is a call of kernels/row_gemv.py, and the engine's layer is timed beside."""
    import raylight.benchmarks.gemv_chain_probe as probe

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[3])
        return row_gemv(*args, **kwargs)

    def run_once(fn) -> float:
        fn()
        return 1.0

    monkeypatch.setattr(probe, "row_gemv", counting)
    monkeypatch.setattr(probe, "time_graph", run_once)
    monkeypatch.setattr(probe, "LAYERS", 2)
    monkeypatch.setattr(probe, "SWEEP", [(4, 64, 2, 1), (8, 32, 1, 1)])
    monkeypatch.setattr(probe, "SWEEP_PROGS", (1, 2))
    rows = probe.sweep_shape(torch.device("cpu"), 16, 128)
    assert sorted(str(r["config"]) for r in rows) == sorted(
        ["engine", "[4, 64, 2, 1, 1]", "[4, 64, 2, 1, 2]", "[8, 32, 1, 1, 1]", "[8, 32, 1, 1, 2]"])
    assert len(calls) == 4 * 2 and all(isinstance(c, RowGemvConfig) for c in calls)


@pytest.mark.gpu
def test_gpu_measured_shapes() -> None:
    table = rg.load_row_table(rg.device_name(torch.device("cuda")))
    llama = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
    for (n, k), cfg in (table or {shape: rg.DEFAULT_CONFIG for shape in llama}).items():
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        for c in (cfg, rg.DEFAULT_CONFIG):
            for bias in (None, b):
                torch.testing.assert_close(row_gemv(x, w, bias, c), row_gemv_ref(x, w, bias),
                                           atol=2e-2, rtol=2e-2)  # fmt: skip
        # The decode layer's fusions at the shapes that use them.
        stream = 3 * torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        kw = {"norm_weight": 1 + 0.1 * torch.randn(k, device="cuda", dtype=torch.bfloat16)}
        if n == 28672:
            kw["gated"] = True
        got = row_gemv(stream, w, None, cfg, **kw)
        torch.testing.assert_close(got, row_gemv_ref(stream, w, None, **kw), atol=3e-2,
                                   rtol=3e-2)  # fmt: skip
        res = torch.randn(1, n, device="cuda", dtype=torch.bfloat16)
        want = row_gemv_ref(x, w, None, residual=res)
        torch.testing.assert_close(row_gemv(x, w, None, cfg, residual=res, out=res), want,
                                   atol=3e-2, rtol=3e-2)  # fmt: skip


def test_engine_greedy_output_unchanged(tiny_models, monkeypatch) -> None:
    """Every one-row linear layer of the engine through the kernel (interpreter): greedy output
    as the torch path's (itself checked against HF transformers in tests/test_engine_hf.py)."""
    import random

    import raylight.engine.layers.linear as linear_mod
    from raylight.engine.config import EngineOptions
    from raylight.engine.llm import create_engine_core
    from raylight.engine.sampling_params import SamplingParams

    from .engine_helpers import assert_pool_empty, run_to_completion

    arch = "qwen2"  # its qkv projection has a bias
    rng = random.Random(5)
    prompts = [[rng.randrange(200) for _ in range(rng.randrange(3, 12))] for _ in range(2)]
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)

    def core(skinny: bool):
        options = EngineOptions(dtype="float32", device="cpu", max_model_len=128,
                                num_kv_slots=512, max_num_seqs=1, skinny_linear=skinny)  # fmt: skip
        return create_engine_core(tiny_models[arch], options, progress=False)

    want = [r.output_token_ids for r in run_to_completion(core(False), prompts, greedy)]
    calls = []

    def every_shape(n: int, k: int, device: torch.device) -> RowGemvConfig:
        calls.append((n, k))
        return RowGemvConfig(8, 128, 2, 1, 1)

    monkeypatch.setattr(linear_mod, "choose_row_config", every_shape)
    fast = core(True)
    got = [r.output_token_ids for r in run_to_completion(fast, prompts, greedy)]
    assert got == want
    assert len(set(calls)) >= 4  # qkv, o, gate_up, down (and the LM head) took the kernel
    assert_pool_empty(fast)


FUSED = {
    "norm": dict(norm=True),
    "gated": dict(gated=True),
    "residual": dict(residual=True),
    "norm-gated-bias": dict(norm=True, gated=True, bias=True),
    "norm-bias": dict(norm=True, bias=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(37, 100), (64, 256), (24, 1030)])
@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["strips", "idle"])
@pytest.mark.parametrize("variant", list(FUSED))
def test_fused_variants_match_the_unfused_ops(dtype, n, k, cfg, variant) -> None:
    from .test_kernels_skinny_linear import _exact, _fused_case

    x, w, b, kw = _fused_case(dtype, 1, n, k, **FUSED[variant])
    atol, rtol = TOL[dtype]
    y = row_gemv(x, w, b, cfg, **kw)
    torch.testing.assert_close(y, row_gemv_ref(x, w, b, **kw), atol=atol, rtol=rtol)
    exact = _exact(x, w, b, **kw).to(dtype)
    torch.testing.assert_close(y, exact, atol=4 * atol, rtol=4 * rtol)


def test_residual_epilogue_in_place_and_errors() -> None:
    x, w = torch.randn(1, 64), torch.randn(24, 64)
    stream = torch.randn(1, 24)
    want = row_gemv_ref(x, w, residual=stream.clone())
    got = row_gemv(x, w, residual=stream, out=stream)
    assert got.data_ptr() == stream.data_ptr()
    torch.testing.assert_close(stream, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="even number of rows"):
        row_gemv(x, torch.randn(25, 64), gated=True)
    with pytest.raises(ValueError, match="residual: expected shape"):
        row_gemv(x, w, residual=torch.randn(1, 23))
    with pytest.raises(ValueError, match="norm_weight: dim 0"):
        row_gemv(x, w, norm_weight=torch.randn(63))


def test_fused_decode_layers_take_it_for_one_row(tiny_models, monkeypatch) -> None:
    """Engine option fuse_decode_layers with every one-row projection through this kernel
    (interpreter): greedy output as the plain torch path's."""
    import raylight.engine.layers.linear as linear_mod
    from raylight.engine.config import EngineOptions
    from raylight.engine.llm import create_engine_core
    from raylight.engine.sampling_params import SamplingParams

    from .engine_helpers import assert_pool_empty, run_to_completion

    prompts = [[5, 17, 99, 3, 42, 8], [120, 7, 7, 61]]
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)

    def core(fast: bool):
        kernels = {"attention_backend": "triton", "fused_kernels": True, "skinny_linear": True,
                   "fuse_decode_layers": True} if fast else {}  # fmt: skip
        options = EngineOptions(dtype="float32", device="cpu", max_model_len=128,
                                num_kv_slots=512, max_num_seqs=1, **kernels)  # fmt: skip
        return create_engine_core(tiny_models["qwen2"], options, progress=False)

    want = [r.output_token_ids for r in run_to_completion(core(False), prompts, greedy)]
    calls = []
    fused = []

    def every_shape(n: int, k: int, device: torch.device) -> RowGemvConfig:
        calls.append((n, k))
        return RowGemvConfig(8, 128, 2, 1, 1)

    def counting(*args, **kwargs):
        fused.append(bool(kwargs.get("norm_weight") is not None or kwargs.get("gated")
                          or kwargs.get("residual") is not None))  # fmt: skip
        return row_gemv(*args, **kwargs)

    monkeypatch.setattr(linear_mod, "choose_row_config", every_shape)
    monkeypatch.setattr(linear_mod, "row_gemv", counting)
    fast = core(True)
    got = [r.output_token_ids for r in run_to_completion(fast, prompts, greedy)]
    assert got == want
    assert sum(fused) >= 4 * fast.config.arch.num_layers  # every projection of a step, fused
    assert_pool_empty(fast)
