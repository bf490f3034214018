"""Placement policy of the router: which engine replica takes a request.

Least-loaded for now: the replica with the fewest requests, counting its last load report plus
what was sent to it since. The interface takes the request's prompt so prefix affinity and
past-future placement can slot in later without changing callers.
"""

from __future__ import annotations

from raylight.cluster.messages import LoadReport


class LeastLoadedPolicy:
    def __init__(self, num_engines: int) -> None:
        if num_engines < 1:
            raise ValueError("the router needs at least one engine replica")
        self._reported = [0] * num_engines  # running + waiting at the last report
        self._sent_since = [0] * num_engines  # placed here after that report
        self._next = 0  # rotates ties so equal replicas share the work

    def pick(self, prompt_token_ids: list[int]) -> int:
        n = len(self._reported)
        loads = [self._reported[i] + self._sent_since[i] for i in range(n)]
        best = min(range(n), key=lambda i: (loads[i], (i - self._next) % n))
        self._next = (best + 1) % n
        self._sent_since[best] += 1
        return best

    def report(self, load: LoadReport) -> None:
        self._reported[load.engine_index] = load.num_running + load.num_waiting
        self._sent_since[load.engine_index] = 0
