"""benchmarks/sim_summary.py on a small `raylight sim` result: ratios and miss reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylight.benchmarks.sim_summary import main as summary_main
from raylight.benchmarks.sim_summary import row
from raylight.cluster.cli import main


def test_summary_row_of_a_sim_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--workload", "sharegpt", "--rate", "40", "--num-requests", "200", "--json"]
    assert main([*argv, "--quiet", "--pool-tokens", "20000"]) == 0
    path = tmp_path / "r.json"
    path.write_text(capsys.readouterr().out)
    data = json.loads(path.read_text())
    r = row(path)
    assert r is not None and r["workload"] == "sharegpt" and r["rate"] == 40.0
    pf, aggr = data["past-future"], data["aggressive"]
    assert r["pf_over_aggressive"] == pytest.approx(pf["goodput"] / aggr["goodput"])
    ag = r["aggressive"]
    assert isinstance(ag, dict)
    assert ag["missed_gap"] == aggr["missed_gap_only"] + aggr["missed_both"]
    misses = ag["missed_ttft_only"] + ag["missed_gap"]
    assert misses == round((1 - aggr["sla_attainment"]) * 200)
    (tmp_path / "other.json").write_text("{}")
    assert row(tmp_path / "other.json") is None
    assert summary_main([str(path), str(tmp_path / "other.json")]) == 0
    assert "sharegpt" in capsys.readouterr().out
