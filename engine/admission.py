"""Admission policies: may a waiting request start now? Pluggable behind one small interface.

A policy only answers yes or no; the scheduler owns the pool and preempts by recompute when the
pool runs out anyway (which the conservative policy never lets happen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raylight.engine.request import Request


def max_future_slots(req: Request) -> int:
    """KV slots `req` may still take: every token but the last one sampled gets K/V."""
    return req.num_prompt_tokens + req.max_tokens - 1 - req.num_computed_tokens


class AdmissionPolicy(Protocol):
    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        """Called once per schedule() before any `admit` call, with the running set."""
        ...

    def admit(self, req: Request) -> bool:
        """Whether `req` may start now; if yes, the policy counts it as running."""
        ...


class ConservativePolicy:
    """Reserve `prompt + max_tokens` for every request: never preempts, may under-fill the pool."""

    def __init__(self) -> None:
        self._headroom = 0

    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        self._headroom = num_free_slots - sum(max_future_slots(r) for r in running)

    def admit(self, req: Request) -> bool:
        need = max_future_slots(req)
        if need > self._headroom:
            return False
        self._headroom -= need
        return True


class AggressivePolicy:
    """Admit while slots are free (vLLM-style); the scheduler preempts when they run out."""

    def begin_step(self, running: Sequence[Request], num_free_slots: int) -> None:
        pass

    def admit(self, req: Request) -> bool:
        return True


def make_policy(name: str) -> AdmissionPolicy:
    policies = {"conservative": ConservativePolicy, "aggressive": AggressivePolicy}
    if name not in policies:
        raise ValueError(f"admission_policy must be one of {sorted(policies)}, got {name!r}")
    return policies[name]()
