"""The router actor: one per application; every request asks it which engine replica to use."""

from __future__ import annotations

from raylight.cluster.messages import LoadReport
from raylight.cluster.routing import LeastLoadedPolicy


class Router:
    """Wrapped as a Ray Serve deployment with one replica by `raylight.cluster.app`."""

    def __init__(self, num_engines: int) -> None:
        self.policy = LeastLoadedPolicy(num_engines)

    async def pick(self, prompt_token_ids: list[int]) -> int:
        return self.policy.pick(prompt_token_ids)

    async def report(self, load: LoadReport) -> None:
        self.policy.report(load)
