"""Background tasks that outlive the HTTP request that started them.

Ray Serve cancels the handle calls a request makes when the request itself is cancelled (client
disconnect), and it finds them through the context variables a task inherits. The abort that
must follow a disconnect, and the ingress's long-lived engine subscriptions, therefore run in
tasks started from a fresh, empty context.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any


class DetachedTasks:
    """Holds the tasks it starts until they end (the event loop keeps only weak references)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        loop = asyncio.get_running_loop()
        task = contextvars.Context().run(loop.create_task, coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
