"""Ray's own tools run the app: `serve run raylight.cluster.app:build_app model=DIR ...` against
a `ray start` head on 127.0.0.1, then an OpenAI request through it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Loopback only: keep Ray from resolving 127.0.0.1 to the machine's address, and skip token auth
# (nothing but this test's own processes can reach a loopback-only head).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A head of its own (not the test session's Ray), stopped with its processes: `--block`
    makes `ray start` own them and take them down when it is terminated."""
    port = free_port()
    head = subprocess.Popen(
        [bin_path("ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats"],
        env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(head, signal.SIGTERM)


def test_serve_run_import_path(ray_head: str, tiny_models: dict[str, Path]) -> None:
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_head}
    http_port = free_port()
    for _ in range(20):  # the head needs a few seconds before it takes clients
        started = subprocess.run(
            [bin_path("serve"), "start", "--http-host", "127.0.0.1", "--http-port",
             str(http_port)], env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if started.returncode == 0:
            break
        time.sleep(1)
    assert started.returncode == 0, started.stderr
    serve_run = subprocess.Popen(
        [bin_path("serve"), "run", "raylight.cluster.app:build_app",
         f"model={tiny_models['llama']}", "served_model_name=tiny", "dtype=float32",
         "max_model_len=256"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert serve_run.poll() is None, serve_run.stderr.read() if serve_run.stderr else ""
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        models = httpx.get(f"{url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        r = httpx.post(f"{url}/v1/completions", timeout=30,
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4,
                             "ignore_eos": True})  # fmt: skip
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        stop(serve_run)  # Ctrl-C: `serve run` deletes the application and exits
    assert serve_run.returncode is not None
