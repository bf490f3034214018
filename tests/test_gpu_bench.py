"""gpu_bench on the CPU: the byte/FLOP accounting against hand counts, and a whole run with tiny
sizes (kernels in the Triton interpreter) whose JSON has every summary figure."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from raylight.benchmarks import gpu_bench
from raylight.benchmarks import gpu_bench_floors as fl
from raylight.benchmarks.gpu_bench_cli import parse_engine_opts
from raylight.benchmarks.gpu_bench_report import SUMMARY_KEYS
from raylight.engine.model_config import ModelArchConfig, load_arch_config


@pytest.fixture(scope="module")
def tiny_arch(tiny_models: dict[str, Path]) -> ModelArchConfig:
    # hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads, head_dim 16, vocab 2048, untied
    return load_arch_config(tiny_models["llama"])


def test_decode_bytes_by_hand(tiny_arch: ModelArchConfig) -> None:
    # per layer: q 64*64 + k, v 64*32 each + o 64*64 = 12288; gate, up, down 3*64*128 = 24576
    assert fl.layer_linear_params(tiny_arch) == 36864
    assert fl.linear_params(tiny_arch) == 2 * 36864 + 2048 * 64
    assert fl.kv_bytes_per_token(tiny_arch, 2) == 2 * 2 * 2 * 16 * 2
    step = fl.decode_step_bytes(tiny_arch, 2, batch=1, attended_tokens=110)
    assert step == {"weights": 409600, "norms": 5 * 64 * 2, "embed_rows": 128,
                    "kv_read": 110 * 256, "kv_write": 256, "total": 438784}  # fmt: skip
    # prompt 100, 20 outputs: decode steps attend 101..119 tokens, 110 on average
    assert fl.tpot_floor_s(tiny_arch, 2, 100, 20, copy_bw=1e9) == pytest.approx(438784e-9)
    fp8 = fl.decode_step_bytes(tiny_arch, 2, batch=1, attended_tokens=110, kv_dtype_bytes=1)
    assert fp8["kv_read"] * 2 == step["kv_read"] and fp8["weights"] == step["weights"]


def test_prefill_flops_by_hand(tiny_arch: ModelArchConfig) -> None:
    flops = fl.prefill_flops(tiny_arch, 100)
    assert flops["linear"] == 2 * 2 * 36864 * 100
    assert flops["lm_head"] == 2 * 2048 * 64
    assert flops["attention"] == 2 * 4 * 4 * 16 * (100 * 101 // 2)
    assert flops["total"] == 17_593_344
    assert fl.ttft_floor_s(tiny_arch, 100, gemm_flops=1e12) == pytest.approx(17_593_344e-12)
    assert fl.causal_pairs(3, cached=2) == 3 * 2 + 6


def test_attention_kernel_accounting() -> None:
    nbytes = fl.decode_attention_bytes(2, 10, heads=4, kv_heads=2, head_dim=16, dtype_bytes=2)
    assert nbytes == {"kv": 2560, "q_out": 512, "index": 80, "total": 3152}
    assert fl.prefill_attention_flops(10, heads=4, head_dim=16) == 4 * 4 * 16 * 55


def test_llama3_8b_weights_match_the_documented_15_gb(tiny_arch: ModelArchConfig) -> None:
    arch = replace(tiny_arch, hidden_size=4096, intermediate_size=14336, num_layers=32,
                   num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=128256)  # fmt: skip
    assert fl.linear_params(arch) * 2 == pytest.approx(15.01e9, rel=1e-3)
    assert fl.kv_bytes_per_token(arch, 2) == 128 * 1024


def test_engine_opts_parse() -> None:
    opts = parse_engine_opts(["attention_backend=triton", "max_num_seqs=64", "enforce_eager=true",
                              "gpu_memory_utilization=0.85", "num_kv_slots=none"])  # fmt: skip
    assert opts == {"attention_backend": "triton", "max_num_seqs": 64, "enforce_eager": True,
                    "gpu_memory_utilization": 0.85, "num_kv_slots": None}  # fmt: skip


def _fake_hf(model_dir: Path, prompts: list[list[int]], output_len: int, device: torch.device,
             dtype: torch.dtype) -> dict[str, object]:  # fmt: skip
    return {"requests": len(prompts), "output_tokens": len(prompts) * output_len,
            "out_tok_s": 123.0, "timing_basis": "fake"}  # fmt: skip


def test_whole_run_on_cpu(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HF's generate_batch takes seconds to set up on the CPU; its wrapper is run by the slow
    # test below, here a stand-in reports a rate.
    monkeypatch.setattr("raylight.benchmarks.gpu_bench_hf.run_hf", _fake_hf)
    out = tmp_path / "bench.json"
    argv = [
        "--model", str(tiny_models["llama"]), "--device", "cpu", "--out", str(out),
        "--time-budget-s", "120", "--num-requests", "3", "--prompt-len", "12",
        "--output-len", "5", "--sharegpt-requests", "3", "--latency-prompt-len", "20",
        "--latency-output-len", "6", "--latency-trials", "2", "--hf-requests", "3",
        "--hf-prompt-len", "8", "--hf-output-len", "4", "--hf-est-tok-s", "1e6",
        "--copy-bytes", str(2**20), "--gemm-n", "64", "--ceiling-iters", "2",
        "--kernel-batches", "1,3", "--kernel-contexts", "9,40", "--kernel-prefill-lens", "24",
        "--kernel-heads", "4", "--kernel-kv-heads", "2", "--kernel-head-dim", "16",
        "--kernel-dtype", "float32", "--kernel-warmup", "1", "--kernel-iters", "2",
        "--engine-opt", "max_model_len=64", "--engine-opt", "max_num_seqs=4",
    ]  # fmt: skip
    gpu_bench.run(argv)
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["skipped"] == []
    s = report["summary"]
    for key in SUMMARY_KEYS[1:]:
        assert isinstance(s[key], (int, float)) and s[key] > 0, key
    assert s["hf_cb_out_tok_s"] == 123.0
    assert s["offline_requests_submitted"] == 3 and s["offline_requests_completed"] == 3
    assert s["decode_attn_case"] == "b3 ctx40" and s["prefill_attn_case"] == "q_len 24"
    lat = report["results"]["latency"]
    assert lat["tpot_floor_ms"] == pytest.approx(s["tpot_floor_ms"])
    assert report["results"]["offline"]["output_tokens"] == 15
    decode = report["results"]["kernels"]["decode"]
    fp8 = [r for r in decode if r["kv_dtype"] == "float8_e4m3fn"]  # the summary's case again
    assert len(decode) == 6 and [(r["batch"], r["kv_len"]) for r in fp8] == [(3, 40)]
    assert 0 < s["decode_attn_fp8_time_ratio"] and 0 < s["decode_attn_fp8_bw_frac"]
    rope = [r for r in decode if r["kernel"] == "rope"]  # the engine's decode-step kernel too
    assert [(r["batch"], r["kv_len"]) for r in rope] == [(3, 40)] and s["decode_rope_attn_bw_frac"]
    assert out.with_suffix(".png").is_file()
    assert report["versions"]["torch"] == torch.__version__
    assert s["attention_backend"] == report["engine_loads"][-1]["attention_backend"] != "auto"


def test_deadline_truncates_and_reports(tiny_models: dict[str, Path]) -> None:
    import time

    from raylight.benchmarks.gpu_bench_engine import make_prompts, run_requests
    from raylight.engine.llm import LLM

    llm = LLM(tiny_models["llama"], progress=False, max_model_len=64)
    res = run_requests(llm.core, make_prompts([8] * 3, 2048, 0), [40] * 3,
                       time.perf_counter() + 0.0, "t")  # fmt: skip
    assert res["truncated"] and res["completed"] == 0 and res["submitted"] == 3
    assert not llm.core.has_unfinished  # aborted: the engine is clean for the next run


@pytest.mark.slow
def test_hf_generate_batch_counts_tokens(tiny_models: dict[str, Path]) -> None:
    from raylight.benchmarks.gpu_bench_hf import run_hf

    res = run_hf(tiny_models["llama"], [[5, 6, 7, 8] * 3] * 3, 6, torch.device("cpu"),
                 torch.float32)  # fmt: skip
    assert res["output_tokens"] == 18 and res["out_tok_s"] > 0
