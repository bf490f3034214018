"""Shared fixtures: tiny random-weight models of every supported architecture."""

from __future__ import annotations

import os

# Triton kernels run in the interpreter on this CPU-only machine; must be set before import.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ARCHS = ("llama", "qwen2", "qwen3", "mistral")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from raylight.engine.modelgen.make_model import make_model

    root = tmp_path_factory.mktemp("models")
    return {
        arch: make_model(arch, "tiny", root / arch, seed=0, dtype="float32", progress=False)
        for arch in ARCHS
    }
