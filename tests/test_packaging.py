"""A non-editable install puts everything under `raylight` and nothing at the top level."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_only_the_raylight_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )  # fmt: skip
    wheel = next((tmp_path / "dist").glob("raylight-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"raylight", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                   + ".dist-info"}  # fmt: skip
    for sub in ("engine", "kernels", "cluster", "benchmarks"):
        assert f"raylight/{sub}/__init__.py" in names
    assert not any(n.startswith("raylight/tests/") for n in names)

    # Install it (no dependencies) into a fresh venv and import from outside the checkout.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    code = (
        "import raylight, raylight.engine, raylight.engine.sampling_params as s, importlib.util;"
        "print(raylight.engine.__file__);"
        "assert importlib.util.find_spec('engine') is None;"
        "assert importlib.util.find_spec('cluster') is None;"
        "assert importlib.util.find_spec('kernels') is None"
    )
    out = subprocess.run(
        [str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "site-packages/raylight/engine/__init__.py" in out.stdout
