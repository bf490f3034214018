"""Schemathesis against the live app's own OpenAPI schema: generated requests, valid and
invalid, never get a 5xx; afterwards no KV slot is held.

Driven through hypothesis directly rather than schemathesis' pytest plugin, which does not
work with pytest 9 (`Function._nodeid`)."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .conftest import LiveServer

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION_AND_MODE = 25


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_generated_requests_get_no_5xx(live_server: LiveServer,
                                       mode: schemathesis.GenerationMode) -> None:  # fmt: skip
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = {op.label for op in operations}
    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize",
            "POST /detokenize", "GET /metrics"} <= tested  # fmt: skip
    statuses: dict[str, set[int]] = {}
    for op in operations:
        if mode is schemathesis.GenerationMode.NEGATIVE and not op.body:
            continue  # nothing to make invalid in a body-less GET

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                  derandomize=True,  # the same requests every run: CI must not be a lottery
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            if mode is schemathesis.GenerationMode.POSITIVE and isinstance(case.body, dict):
                # A random model name only ever gets a 404: name the served one, so generated
                # sampling parameters reach the engine.
                case.body["model"] = live_server.model
            response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        check()
    if mode is schemathesis.GenerationMode.POSITIVE:  # generated requests really generated
        assert 200 in statuses["POST /v1/completions"], statuses
        assert 200 in statuses["POST /v1/chat/completions"], statuses
    from ray import serve

    engine = serve.get_deployment_handle("engine-0", "raylight")
    for _ in range(100):
        if engine.load.remote().result().kv_slots_used == 0:
            return
        time.sleep(0.1)
    raise AssertionError("KV slots still in use after the schema run")
