"""The engine replica's Serve-facing class and the router policy, without Ray."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raylight.cluster.engine_server import EngineServer
from raylight.cluster.messages import LoadReport, Rejection
from raylight.cluster.routing import LeastLoadedPolicy
from raylight.engine.sampling_params import SamplingParams


def test_least_loaded_policy_spreads_and_follows_reports() -> None:
    policy = LeastLoadedPolicy(3)
    assert sorted(policy.pick([1]) for _ in range(3)) == [0, 1, 2]  # ties rotate
    policy.report(LoadReport(0, num_running=10, num_waiting=5, kv_slots_used=0, kv_slots_total=1))
    policy.report(LoadReport(1, num_running=0, num_waiting=0, kv_slots_used=0, kv_slots_total=1))
    policy.report(LoadReport(2, num_running=2, num_waiting=0, kv_slots_used=0, kv_slots_total=1))
    picks = [policy.pick([1]) for _ in range(4)]
    assert picks.count(0) == 0 and picks.count(1) >= 2


def test_deltas_of_one_ingress_arrive_batched_per_step(tiny_models: dict[str, Path]) -> None:
    server = EngineServer(str(tiny_models["llama"]), {"dtype": "float32", "max_model_len": 128}, 0)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    async def scenario() -> tuple[list[list], Rejection | None]:
        for i in range(4):
            assert await server.add("ing", f"r{i}", [3 + i] * 5, params) is None
        rejected = await server.add("ing", "bad", [1] * 500, params)
        messages, finished = [], set()
        stream = server.subscribe("ing")
        while len(finished) < 4:
            batch = await stream.__anext__()
            messages.append(batch)
            finished |= {d.request_id for d in batch if d.finish_reason is not None}
        await stream.aclose()
        return messages, rejected

    messages, rejected = asyncio.run(scenario())
    assert rejected is not None and rejected.param == "prompt"
    tokens: dict[str, list[int]] = {}
    for batch in messages:
        for d in batch:
            tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
    assert sorted(tokens) == ["r0", "r1", "r2", "r3"] and all(len(t) == 8 for t in tokens.values())
    # 4 requests x 8 tokens arrive in about 8 messages (one per step), not 32.
    assert len(messages) <= 10
    server.engine.shutdown()
