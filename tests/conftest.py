"""Shared fixtures: tiny random-weight models of every supported architecture."""

from __future__ import annotations

import os
import sys

# The checkout's root is the `raylight` package (installed editable), and its folder `kernels/`
# would shadow Hugging Face's `kernels` package, which transformers >= 5.25 imports: keep the
# root itself off sys.path (`python -m pytest` puts the working directory there).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]

# Triton kernels run in the interpreter on this CPU-only machine; must be set before import.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Ray on loopback only: without this, Ray swaps 127.0.0.1 for the machine's address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
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


@dataclass(frozen=True)
class LiveServer:
    """Two apps in one Ray Serve instance on 127.0.0.1: `url` serves the tiny llama openly;
    `guarded_url` serves it with an API key, one running sequence and a one-request queue."""

    url: str
    guarded_url: str
    model: str
    api_key: str
    max_body_bytes: int


@pytest.fixture(scope="session")
def live_server(tiny_models: dict[str, Path]) -> Iterator[LiveServer]:
    import socket

    import ray
    from ray import serve

    from raylight.cluster.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model_dir = str(tiny_models["llama"])
    server = LiveServer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/guarded", "tiny",
                        "sk-test-key", 100_000)  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"model": model_dir, "served_model_name": server.model, "dtype": "float32",
              "max_model_len": 256}  # fmt: skip
    serve.run(build_app({**common, "max_request_body_bytes": server.max_body_bytes}),
              name="raylight", route_prefix="/")  # fmt: skip
    guarded = {**common, "api_key": server.api_key, "max_num_seqs": 1, "max_queued_requests": 1,
               "max_model_len": 2048}  # fmt: skip
    serve.run(build_app(guarded), name="guarded", route_prefix="/guarded")
    yield server
    serve.shutdown()
    ray.shutdown()
