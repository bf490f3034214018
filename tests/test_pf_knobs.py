"""benchmarks/pf_knobs.py: one simulator run with chosen past-future knobs."""

from __future__ import annotations

import json

import pytest

from raylight.benchmarks import pf_knobs
from raylight.engine.admission import PastFutureConfig
from raylight.engine.sim.cost_model import COST_MODELS
from raylight.engine.sim.loop import SimConfig
from raylight.engine.sim.sweep import SimSetup, run_policy

SCENARIO = ["--workload", "sharegpt", "--rate", "50.0", "--num-requests", "120",
            "--pool-tokens", "6000", "--max-num-seqs", "64"]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert pf_knobs.main([*SCENARIO, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_knobs_reach_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed report is the sweep's own run of the same setup with the same knobs, and
    the knobs change what the policy does (a lower safety factor admits less, so it waits
    longer for its first tokens on a pool this small)."""
    out = _run(capsys, "--quantile", "0.5", "--safety", "0.6", "--num-draws", "4")
    assert out["knobs"]["quantile"] == 0.5 and out["scenario"]["workload"] == "sharegpt"
    config = SimConfig(num_kv_slots=6000, max_num_seqs=64,
                       past_future=PastFutureConfig(safety=0.6, num_draws=4, quantile=0.5))
    want = run_policy(SimSetup("sharegpt", 120, 0, config, COST_MODELS["h100-llama3-8b"]()),
                      "past-future", 50.0)  # fmt: skip
    assert out["report"]["goodput"] == want.goodput
    assert out["report"]["preemptions"] == want.preemptions
    loose = _run(capsys, "--quantile", "0.5", "--safety", "1.0", "--num-draws", "4")
    assert loose["report"]["ttft_mean_s"] < out["report"]["ttft_mean_s"]


def test_other_policies_carry_no_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "--policy", "conservative", "--no-prefix-cache")
    assert out["knobs"] is None and out["scenario"]["no_prefix_cache"] is True
    assert out["report"]["preemptions"] == 0  # conservative never preempts
