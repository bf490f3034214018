"""The shipped Serve config is valid for `serve deploy` and its args build a valid app config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from raylight.cluster.app_config import app_config_from_args

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve.yaml"


def test_serve_config_validates_against_ray_schema() -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "raylight.cluster.app:build_app"
    config = app_config_from_args(app.args)
    assert config.served_model_name == "raylight-tiny"
    assert config.engine["max_model_len"] == 2048


def test_app_args_are_typed_and_unknown_keys_refused() -> None:
    config = app_config_from_args({"model": "/m", "max-model-len": "512", "api_key": "k"})
    assert config.engine == {"max_model_len": 512} and config.api_key == "k"
    with pytest.raises(ValueError, match="unknown application argument 'max_len'"):
        app_config_from_args({"max_len": "5"})
    for text, expected in (("false", False), ("True", True), ("0", False), (True, True)):
        config = app_config_from_args({"enable_prefix_caching": text})
        assert config.engine == {"enable_prefix_caching": expected}
    with pytest.raises(ValueError, match="expected a boolean"):
        app_config_from_args({"enable_prefix_caching": "maybe"})
    assert app_config_from_args({"async-scheduling": "off"}).engine == {"async_scheduling": False}


def test_queue_limit_must_leave_room_for_one_request() -> None:
    from raylight.cluster.app import build_app_from_config

    for bad in (0, -2):
        with pytest.raises(ValueError, match="max_queued_requests must be -1"):
            build_app_from_config(app_config_from_args({"max_queued_requests": bad}))
