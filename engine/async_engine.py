"""The engine's step loop in its own thread, with an asyncio API for servers.

`generate()` adds a request and yields its `RequestDelta`s; leaving the iterator early (client
gone, task cancelled) aborts the request, which frees its KV slots before the next step. Each
step's deltas reach each event loop in one `call_soon_threadsafe`, never one call per token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from raylight.engine.batch import RequestDelta
from raylight.engine.engine_core import EngineCore
from raylight.engine.errors import RequestRejectedError
from raylight.engine.request import Request
from raylight.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class _Add:
    request: Request


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


Sink = Callable[[RequestDelta | BaseException], None]


class EngineDeadError(RuntimeError):
    """The step loop failed; the original exception is the `__cause__`."""


class AsyncEngine:
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._inbox: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        # request id -> (its event loop, its sink); touched by both threads under the lock. A sink
        # is called on its loop with each delta, or once with an exception.
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, Sink]] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="raylight-engine", daemon=True)
        self._thread.start()

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        sample_index: int = 0,
    ) -> AsyncIterator[RequestDelta]:
        """Streams one sample's deltas; raises `RequestRejectedError` before yielding if the
        request is invalid."""
        req = self.core.make_request(request_id, prompt_token_ids, params, sample_index)
        out: asyncio.Queue[RequestDelta | BaseException] = asyncio.Queue()
        self.submit(req, out.put_nowait)
        finished = False
        try:
            while not finished:
                item = await out.get()
                if isinstance(item, RequestRejectedError):
                    finished = True
                    raise item
                if isinstance(item, BaseException):
                    raise EngineDeadError("the engine loop failed") from item
                finished = item.finish_reason is not None
                yield item
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._inbox.put(_Abort(request_id))

    def submit(self, req: Request, sink: Sink) -> None:
        """Adds a request made by `core.make_request`; `sink` is then called on the caller's
        event loop with each of its deltas (the last has a finish_reason), or once with an
        exception. For servers that fan deltas out themselves instead of awaiting `generate`."""
        with self._lock:
            if self._error is not None:
                raise EngineDeadError("the engine loop has stopped") from self._error
            if req.request_id in self._streams:
                raise ValueError(f"request id {req.request_id!r} is already in use")
            self._streams[req.request_id] = (asyncio.get_running_loop(), sink)
        self._inbox.put(_Add(req))

    @property
    def num_unfinished(self) -> int:
        """Requests submitted and not yet finished or aborted (queued ones included)."""
        return len(self._streams)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def shutdown(self) -> None:
        self._inbox.put(_Stop())
        self._thread.join(timeout=30)

    # ---- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                block = not self.core.has_unfinished
                if not self._drain(block):
                    self._error = EngineDeadError("the engine was shut down")
                    self._fail_all(self._error)
                    return
                deltas = self.core.step()
                if deltas:
                    self._dispatch(deltas)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn the loop died
            self._error = exc
            self._fail_all(exc)

    def _drain(self, block: bool) -> bool:
        """Applies queued adds/aborts; waits for one if the engine is idle. False on stop."""
        while True:
            try:
                cmd = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if isinstance(cmd, _Stop):
                return False
            if isinstance(cmd, _Add):
                try:
                    self.core.add(cmd.request)
                except RequestRejectedError as exc:
                    self._send(cmd.request.request_id, exc)
            else:
                self.core.abort(cmd.request_id)
                with self._lock:
                    self._streams.pop(cmd.request_id, None)

    def _dispatch(self, deltas: list[RequestDelta]) -> None:
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sink, RequestDelta]]] = {}
        with self._lock:
            for d in deltas:
                if d.finish_reason is None:
                    target = self._streams.get(d.request_id)
                else:
                    target = self._streams.pop(d.request_id, None)
                if target is not None:
                    per_loop.setdefault(target[0], []).append((target[1], d))
        for loop, items in per_loop.items():
            _call_soon(loop, _deliver, items)

    def _send(self, request_id: str, item: BaseException) -> None:
        with self._lock:
            target = self._streams.pop(request_id, None)
        if target is not None:
            _call_soon(target[0], target[1], item)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            targets = list(self._streams.values())
            self._streams.clear()
        for loop, sink in targets:
            _call_soon(loop, sink, exc)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # that event loop is closed: nobody is listening any more


def _deliver(items: list[tuple[Sink, RequestDelta]]) -> None:
    for sink, d in items:
        sink(d)
