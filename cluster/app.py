"""The serving application: ingress (N replicas) -> router (one) -> engine replicas.

Usable from `raylight serve`, `serve run raylight.cluster.app:build_app model=DIR ...`, a Serve
config file (`configs/serve.yaml`) and KubeRay's `serveConfigV2`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from raylight.cluster.app_config import AppConfig, app_config_from_args
from raylight.cluster.engine_server import EngineServer
from raylight.cluster.ingress import OpenAIIngress
from raylight.cluster.router import Router


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder; `args` are `serve run` key=value pairs."""
    return build_app_from_config(app_config_from_args(args))


def build_app_from_config(config: AppConfig) -> Application:
    from raylight.engine.config import resolve_engine_config
    from raylight.engine.llm import engine_options
    from raylight.engine.model_config import load_arch_config

    if config.max_queued_requests == 0 or config.max_queued_requests < -1:
        raise ValueError(
            "max_queued_requests must be -1 (no limit) or at least 1 (every new request waits "
            f"in the queue for at least a step), got {config.max_queued_requests}"
        )
    model_dir = config.model
    if not model_dir:
        from raylight.engine.modelgen.default_model import ensure_default_model

        model_dir = str(ensure_default_model())
    if not config.served_model_name:
        name = Path(model_dir).name if config.model else "raylight-tiny"
        config = dataclasses.replace(config, served_model_name=name)
    # Resolved here so a bad model directory or option fails before anything is deployed.
    resolved = resolve_engine_config(
        Path(model_dir), load_arch_config(Path(model_dir)), engine_options(config.engine)
    )
    gpus = config.tensor_parallel_size if resolved.device.type == "cuda" else 0
    router = serve.deployment(Router, name="router", ray_actor_options={"num_cpus": 0}).bind(
        config.num_engine_replicas
    )
    engines = [
        serve.deployment(
            EngineServer,
            name=f"engine-{i}",
            ray_actor_options={"num_gpus": gpus, "num_cpus": 1},
            max_ongoing_requests=100_000,  # admission is the engine scheduler's job
            # Ingress subscriptions are endless streams: don't wait for them to drain.
            graceful_shutdown_wait_loop_s=0.5,
            graceful_shutdown_timeout_s=2,
        ).bind(model_dir, config.engine, i, router, config.max_queued_requests)
        for i in range(config.num_engine_replicas)
    ]
    ingress = serve.deployment(
        OpenAIIngress,
        name="openai",
        num_replicas=config.num_ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        # The queue limit is enforced by each engine replica (`max_queued_requests`), which
        # answers with an OpenAI error; Serve's own limit would answer in plain text.
        max_ongoing_requests=100_000,
    )
    return ingress.bind(
        config,
        model_dir,
        resolved.scheduler.max_model_len,
        resolved.arch.vocab_size,
        engines,
        router,
    )
