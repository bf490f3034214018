"""The async engine API: concurrent streams, abort on early exit, errors per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raylight.engine.async_engine import AsyncEngine, EngineDeadError
from raylight.engine.config import EngineOptions
from raylight.engine.errors import RequestRejectedError
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import run_to_completion


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async_scheduling"])
def engine(tiny_models: dict[str, Path], request: pytest.FixtureRequest):
    """Every test runs with both step loops: the synchronous one, and async scheduling (steps
    scheduled ahead of the last one's update, as on a GPU)."""
    opts = EngineOptions(
        dtype="float32", max_model_len=256, max_num_seqs=8, max_num_batched_tokens=64,
        async_scheduling=request.param,
    )  # fmt: skip
    eng = AsyncEngine(create_engine_core(tiny_models["llama"], opts, progress=False))
    yield eng
    eng.shutdown()


def wait_idle(engine: AsyncEngine) -> None:
    async def idle() -> None:
        for _ in range(200):
            sched = engine.core.scheduler
            if not sched.has_unfinished and sched.num_free_slots == sched.allocator.capacity:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("KV slots still held after all streams ended")

    asyncio.run(idle())


def test_concurrent_streams_equal_sequential(engine: AsyncEngine, tiny_models: dict) -> None:
    prompts = [[i + 3] * (i + 1) for i in range(12)]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)

    async def one(i: int) -> list[int]:
        tokens: list[int] = []
        async for delta in engine.generate(f"c{i}", prompts[i], params):
            tokens.extend(delta.new_token_ids)
            last = delta
        assert last.finish_reason == "length"
        return tokens

    async def all_of_them() -> list[list[int]]:
        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    streamed = asyncio.run(all_of_them())
    ref_opts = EngineOptions(dtype="float32", max_model_len=256)
    ref_core = create_engine_core(tiny_models["llama"], ref_opts, progress=False)
    sequential = [run_to_completion(ref_core, [p], params)[0].output_token_ids for p in prompts]
    assert streamed == sequential
    wait_idle(engine)


def test_leaving_a_stream_early_aborts_and_frees_slots(engine: AsyncEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)

    async def consume_some() -> None:
        gen = engine.generate("early", [5] * 10, params)
        async for delta in gen:
            if len(delta.new_token_ids) and delta.finish_reason is None:
                break
        await gen.aclose()

    async def cancelled() -> None:
        async def forever() -> None:
            async for _ in engine.generate("cancel", [6] * 10, params):
                pass

        task = asyncio.create_task(forever())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(consume_some())
    asyncio.run(cancelled())
    wait_idle(engine)


def test_invalid_request_raises_and_engine_keeps_serving(engine: AsyncEngine) -> None:
    async def bad() -> None:
        async for _ in engine.generate("bad", [1] * 300, SamplingParams(max_tokens=1)):
            pass

    with pytest.raises(RequestRejectedError):
        asyncio.run(bad())

    async def good() -> int:
        n = 0
        async for d in engine.generate("good", [1, 2, 3], SamplingParams(max_tokens=4)):
            n += len(d.new_token_ids)
        return n

    assert asyncio.run(good()) >= 1
    wait_idle(engine)


def test_shutdown_fails_waiting_streams(tiny_models: dict[str, Path]) -> None:
    opts = EngineOptions(dtype="float32", max_model_len=256)
    eng = AsyncEngine(create_engine_core(tiny_models["llama"], opts, progress=False))
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)

    async def stream_then_shutdown() -> None:
        gen = eng.generate("first", [4, 5, 6], params)
        await gen.__anext__()
        eng.shutdown()
        with pytest.raises(EngineDeadError):
            async for _ in gen:
                pass
        with pytest.raises(EngineDeadError):
            await eng.generate("second", [4, 5, 6], params).__anext__()

    asyncio.run(stream_then_shutdown())
