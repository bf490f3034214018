"""The serving application's settings, from `raylight serve` flags or `serve run` key=value args."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AppConfig:
    model: str  # an HF model directory; "" means the embedded default model
    served_model_name: str = ""  # the `model` name clients use; default: the directory name
    num_engine_replicas: int = 1
    num_ingress_replicas: int = 1
    api_key: str | None = None
    max_queued_requests: int = 1024  # per engine replica; -1: no limit
    max_request_body_bytes: int = 32 * 2**20
    # Engine options (see raylight.engine.config.EngineOptions), passed through unchanged.
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def tensor_parallel_size(self) -> int:
        return int(self.engine.get("tensor_parallel_size", 1))


def _bool(value: object) -> bool:
    """`serve run ... enable_prefix_caching=false` passes strings; YAML and Python pass bools."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


_ENGINE_KEYS = {
    "dtype": str,
    "max_model_len": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "tensor_parallel_size": int,
    "seed": int,
    "num_kv_slots": int,
    "gpu_memory_utilization": float,
    "device": str,
    "enable_prefix_caching": _bool,
    "admission_policy": str,
    "async_scheduling": _bool,
    "kv_cache_dtype": str,
}
_APP_KEYS = {
    "model": str,
    "served_model_name": str,
    "num_engine_replicas": int,
    "num_ingress_replicas": int,
    "api_key": str,
    "max_queued_requests": int,
    "max_request_body_bytes": int,
}


def app_config_from_args(args: dict[str, Any]) -> AppConfig:
    """Parses `serve run raylight.cluster.app:build_app model=DIR max_model_len=2048` style
    arguments (strings or already-typed values); unknown keys are an error."""
    app: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for key, value in args.items():
        key = key.replace("-", "_")
        if key in _APP_KEYS:
            app[key] = None if value is None else _APP_KEYS[key](value)
        elif key in _ENGINE_KEYS:
            if value is not None:
                engine[key] = _ENGINE_KEYS[key](value)
        else:
            known = sorted(_APP_KEYS) + sorted(_ENGINE_KEYS)
            raise ValueError(f"unknown application argument {key!r}; known: {', '.join(known)}")
    app.setdefault("model", "")
    return dataclasses.replace(AppConfig(**app), engine=engine)
