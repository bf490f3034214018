"""What one HTTP generation request did, measured at the ingress: time to first token, the gaps
between tokens, token counts; recorded into the metrics and logged as one line when it ends."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from raylight.cluster.generation import SampleEvent
from raylight.cluster.metrics import ServingMetrics


@dataclass(slots=True)
class RequestTrace:
    """Times are `time.monotonic()` seconds. A sample is keyed by (prompt index, sample index).

    Invariant: `completion_tokens` is the sum over samples of their latest `num_output_tokens`
    (what `usage` reports); `gaps_s` holds one entry per generated token after a sample's first.
    """

    request_id: str
    endpoint: str
    start: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    first_token_at: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    _last_at: dict[tuple[int, int], float] = field(default_factory=dict)
    _output_tokens: dict[tuple[int, int], int] = field(default_factory=dict)
    _cached_tokens: dict[int, int] = field(default_factory=dict)  # per prompt: largest hit
    _done: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(self._output_tokens.values())

    @property
    def cached_tokens(self) -> int:
        return sum(self._cached_tokens.values())

    def on_event(self, prompt_index: int, ev: SampleEvent, now: float) -> None:
        key = (prompt_index, ev.index)
        self._output_tokens[key] = ev.num_output_tokens
        if ev.num_cached_tokens is not None:
            best = self._cached_tokens.get(prompt_index, 0)
            self._cached_tokens[prompt_index] = max(best, ev.num_cached_tokens)
        n = len(ev.token_ids)
        if n == 0:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        last = self._last_at.get(key)
        if last is not None:
            # Tokens that arrive together (held back by the detokenizer, or several per step)
            # share the gap since the sample's previous tokens.
            self.gaps_s.extend([(now - last) / n] * n)
        else:
            self.gaps_s.extend([0.0] * (n - 1))
        self._last_at[key] = now

    async def observe(self, prompt_index: int, events: AsyncIterator[SampleEvent]) -> AsyncIterator[
        SampleEvent
    ]:
        """Passes `events` through, recording each."""
        async for ev in events:
            self.on_event(prompt_index, ev, time.monotonic())
            yield ev

    def finish(self, status: str, metrics: ServingMetrics, log: logging.Logger) -> None:
        """Records the request once (later calls do nothing); never logs prompt text."""
        if self._done:
            return
        self._done = True
        now = time.monotonic()
        ttft = None if self.first_token_at is None else self.first_token_at - self.start
        metrics.observe_request(
            self.endpoint, status, self.prompt_tokens, self.cached_tokens, self.completion_tokens,
            ttft, self.gaps_s, now - self.start,
        )  # fmt: skip
        line = {
            "event": "request_done",
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "status": status,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": None if ttft is None else round(ttft, 6),
            "total_s": round(now - self.start, 6),
        }
        log.info(json.dumps(line))
