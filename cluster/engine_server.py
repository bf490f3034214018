"""One engine replica inside Ray Serve: token ids in, batched deltas out.

Each ingress replica holds one long-lived `subscribe` stream per engine replica; the engine puts
every step's deltas for that ingress's requests into one message on it. So the Ray traffic is
one call per request (`add`) plus one message per engine step per ingress, never one message
per token per request, and a step's first tokens leave as soon as the step ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from raylight.cluster.messages import LoadReport, Rejection
from raylight.engine.async_engine import AsyncEngine, EngineDeadError
from raylight.engine.batch import RequestDelta
from raylight.engine.errors import RequestRejectedError
from raylight.engine.llm import create_engine_core, engine_options
from raylight.engine.sampling_params import SamplingParams

REPORT_INTERVAL_S = 0.1


class _Outbox:
    """Deltas waiting to go to one ingress, and the event its stream waits on."""

    def __init__(self) -> None:
        self.items: list[RequestDelta] = []
        self.error: BaseException | None = None
        self.ready = asyncio.Event()

    def put(self, item: RequestDelta | BaseException) -> None:
        if isinstance(item, BaseException):
            self.error = item
        else:
            self.items.append(item)
        self.ready.set()


class EngineServer:
    """Wrapped as a Ray Serve deployment (one replica each) by `raylight.cluster.app`."""

    def __init__(
        self,
        model: str,
        options: dict[str, Any],
        engine_index: int,
        router: Any = None,
        max_queued_requests: int = -1,
    ) -> None:
        core = create_engine_core(model, engine_options(options), progress=False)
        self.engine = AsyncEngine(core)
        self.engine_index = engine_index
        self.max_queued_requests = max_queued_requests  # negative: no limit
        self.router = router
        self._outboxes: dict[str, _Outbox] = {}
        self._report_task: asyncio.Task | None = None

    def _outbox(self, ingress_id: str) -> _Outbox:
        if self._report_task is None and self.router is not None:
            self._report_task = asyncio.get_running_loop().create_task(self._report_loop())
        return self._outboxes.setdefault(ingress_id, _Outbox())

    async def add(
        self,
        ingress_id: str,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        sample_index: int = 0,
    ) -> Rejection | None:
        """Starts a request; its deltas go to `ingress_id`'s stream. Returns why it was refused,
        if it was."""
        if 0 <= self.max_queued_requests <= self.num_queued():
            return Rejection(
                f"engine replica {self.engine_index} has {self.num_queued()} requests queued "
                f"(max_queued_requests={self.max_queued_requests}); retry later",
                None,
                overloaded=True,
            )
        try:
            req = self.engine.core.make_request(request_id, prompt_token_ids, params, sample_index)
            self.engine.submit(req, self._outbox(ingress_id).put)
        except RequestRejectedError as exc:
            return Rejection(str(exc), exc.param)
        return None

    def num_queued(self) -> int:
        """Requests accepted but not yet running (waiting, preempted, or not yet seen by the
        engine thread); read without locking, so off by a step at most."""
        return self.engine.num_unfinished - len(self.engine.core.scheduler.running)

    async def abort(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.engine.abort(rid)

    async def subscribe(self, ingress_id: str) -> AsyncIterator[list[RequestDelta]]:
        outbox = self._outbox(ingress_id)
        while True:
            await outbox.ready.wait()
            outbox.ready.clear()
            items, outbox.items = outbox.items, []
            if items:
                yield items
            if outbox.error is not None:
                raise EngineDeadError("the engine loop has stopped") from outbox.error

    async def load(self) -> LoadReport:
        sched = self.engine.core.scheduler
        return LoadReport(
            engine_index=self.engine_index,
            num_running=len(sched.running),
            num_waiting=self.num_queued(),
            kv_slots_used=sched.num_used_slots,
            kv_slots_total=sched.allocator.capacity,
        )

    async def _report_loop(self) -> None:
        while True:
            await self.router.report.remote(await self.load())
            await asyncio.sleep(REPORT_INTERVAL_S)

    def __del__(self) -> None:
        self.engine.shutdown()
