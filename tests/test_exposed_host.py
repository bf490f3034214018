"""The exposed-host benchmark runs (on the CPU: no device time to hide behind) and counts one
token per request per step in both modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raylight.benchmarks import exposed_host


def test_runs_on_cpu_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "exposed.json"
    argv = ["--device", "cpu", "--gpu-busy-ms", "0", "--batch", "1", "5", "--steps", "6",
            "--vocab", "64", "--out", str(out)]  # fmt: skip
    assert exposed_host.main(argv) == 0
    report = json.loads(out.read_text())
    modes = [(r["sampling"], r["batch"], r["async_scheduling"]) for r in report["results"]]
    assert len(modes) == 8 and len(set(modes)) == 8
    assert all(r["step_ms"] > 0 for r in report["results"])
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        exposed_host.main(["--device", "cpu", "--gpu-busy-ms", "1"])
