"""benchmarks/sim_vs_engine.py end to end on a tiny model: both runs finish every request at its
true length and the JSON has the fitted coefficients, both results and their differences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylight.benchmarks.sim_vs_engine import KEYS, Setup, chat_workload, compare, main, spread


def test_workload_max_tokens_are_the_true_lengths() -> None:
    w = chat_workload(50, 10.0, seed=0, vocab=2048, max_model_len=1024)
    assert (w.max_tokens == w.output_len).all() and (w.prompt_len + w.output_len <= 1024).all()
    assert 2 <= min(w.tokens) and max(w.tokens) < 2048


@pytest.mark.parametrize("clock", ["cpu", "wall"])
def test_tiny_pipeline(tmp_path: Path, clock: str) -> None:
    from raylight.engine.modelgen.make_model import make_model

    model = make_model("llama", "tiny", tmp_path / "m", dtype="float32", progress=False)
    setup = Setup(num_kv_slots=1200, num_requests=20, calib_requests=20, rate=200.0, clock=clock)
    out = compare(model, setup, progress=False)
    json.dumps(out)  # JSON-ready
    engine, sim = out["engine"], out["sim"]
    assert engine["num_requests"] == sim["num_requests"] == 20
    assert engine["output_tokens"] == sim["output_tokens"]
    assert set(out["cost_model"]) == {"base_s", "prefill_token_s", "decode_request_s", "kv_token_s"}
    assert out["setup"]["clock"] == clock
    for key in ("output_tokens_per_s", "requests_per_s", "preemptions"):
        assert key in out["relative_difference"] and key in out["relative_difference_in_sample"]
    rel = out["relative_difference"]["output_tokens_per_s"]
    assert rel == pytest.approx(sim["output_tokens_per_s"] / engine["output_tokens_per_s"] - 1)


def test_cli_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raylight.engine.modelgen.make_model import make_model

    model = make_model("llama", "tiny", tmp_path / "m", dtype="float32", progress=False)
    out = tmp_path / "r.json"
    argv = ["--model-dir", str(model), "--out", str(out), "--num-requests", "10"]
    assert main([*argv, "--calib-requests", "10", "--clock", "cpu", "--num-kv-slots", "1100"]) == 0
    assert json.loads(out.read_text())["setup"]["num_requests"] == 10
    capsys.readouterr()


def test_spread_over_repeats() -> None:
    runs = [
        {"relative_difference": dict.fromkeys(KEYS, x), "relative_difference_in_sample": {}}
        for x in (0.1, -0.2, 0.05)
    ]
    s = spread(runs, "relative_difference")
    assert s["preemptions"] == {"min": -0.2, "median": 0.05, "max": 0.1}


def test_repeated_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raylight.engine.modelgen.make_model import make_model

    model = make_model("llama", "tiny", tmp_path / "m", dtype="float32", progress=False)
    argv = ["--model-dir", str(model), "--num-requests", "10", "--calib-requests", "10"]
    assert main([*argv, "--clock", "cpu", "--num-kv-slots", "1100", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["repeats"] == 2 and len(out["runs"]) == 2
    tps = [run["relative_difference"]["output_tokens_per_s"] for run in out["runs"]]
    assert out["spread"]["output_tokens_per_s"]["min"] == min(tps)
    assert set(out["spread_in_sample"]) == set(KEYS)
