"""Typed messages between the ingress, the router and the engine replicas."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What an engine replica tells the router about itself."""

    engine_index: int
    num_running: int
    num_waiting: int
    kv_slots_used: int
    kv_slots_total: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """The engine refused a request: a message a user can act on, and the field at fault.
    `overloaded`: refused because the replica's queue is full (retry later), not because the
    request is invalid."""

    message: str
    param: str | None
    overloaded: bool = False
