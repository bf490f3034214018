"""One prompt's generation as the ingress sees it: route it, start its n samples on an engine
replica, and turn the token deltas coming back into text events (detokenized, stop strings cut).

Leaving the iterator early (client disconnect, error) aborts the samples still running, so their
KV slots are freed within one engine step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

from raylight.cluster.detached import DetachedTasks
from raylight.cluster.detokenizer import DetokenizeParams, IncrementalDetokenizer
from raylight.cluster.errors import bad_request, overloaded
from raylight.cluster.messages import Rejection
from raylight.cluster.params import TextOptions
from raylight.engine.batch import RequestDelta, TokenLogprobs
from raylight.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class SampleEvent:
    """New text (and the tokens behind it) of sample `index`; `finish_reason` on its last."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None
    num_output_tokens: int  # tokens of this sample that count as output so far
    # Prompt tokens served from the engine's prefix cache; on the sample's first event only.
    num_cached_tokens: int | None = None


_STARTED = object()  # the first item of `_sample_events`: every sample has been added


class DeltaRouter:
    """Per ingress replica: request id -> the queue of the generation waiting for it."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[RequestDelta]] = {}

    def deliver(self, deltas: list[RequestDelta]) -> None:
        for d in deltas:
            q = self.queues.get(d.request_id)
            if q is not None:
                q.put_nowait(d)


async def start_samples(
    *,
    ingress_id: str,
    request_id: str,
    prompt_token_ids: list[int],
    params: SamplingParams,
    text_options: TextOptions,
    tokenizer: Any,
    engine: Any,  # a DeploymentHandle to the chosen engine replica
    deltas: DeltaRouter,
    background: DetachedTasks,
) -> AsyncGenerator[SampleEvent, None]:
    """Adds the prompt's samples to `engine` now, so a refusal (400, or 503 when the replica's
    queue is full) is raised here, before any response starts; returns their event stream.
    Closing that stream early aborts the samples still running (an abandoned stream is closed
    by the event loop's async-generator finalizer when it is garbage-collected)."""
    stream = _sample_events(
        ingress_id, request_id, prompt_token_ids, params, text_options, tokenizer, engine, deltas,
        background,
    )  # fmt: skip
    first = await stream.__anext__()  # runs up to the point where every sample was added
    assert first is _STARTED
    return cast("AsyncGenerator[SampleEvent, None]", stream)


async def _sample_events(
    ingress_id: str,
    request_id: str,
    prompt_token_ids: list[int],
    params: SamplingParams,
    text_options: TextOptions,
    tokenizer: Any,
    engine: Any,
    deltas: DeltaRouter,
    background: DetachedTasks,
) -> AsyncGenerator[SampleEvent | object, None]:
    sample_ids = [f"{request_id}-{j}" for j in range(params.n)]
    queue: asyncio.Queue[RequestDelta] = asyncio.Queue()
    for rid in sample_ids:
        deltas.queues[rid] = queue
    running: set[str] = set()
    detok_params = DetokenizeParams(
        skip_special_tokens=text_options.skip_special_tokens,
        stop=text_options.stop,
        include_stop_str_in_output=text_options.include_stop_str_in_output,
    )
    detoks = [IncrementalDetokenizer(tokenizer, prompt_token_ids, detok_params) for _ in sample_ids]
    try:
        for j, rid in enumerate(sample_ids):
            running.add(rid)  # before the call: a cancelled `add` may still have landed
            rejection = await engine.add.remote(ingress_id, rid, prompt_token_ids, params, j)
            if rejection is not None:
                running.discard(rid)
                raise _rejection_error(rejection)
        yield _STARTED
        while running:
            d = await queue.get()
            j = int(d.request_id.rsplit("-", 1)[1])
            if d.request_id not in running:
                continue  # in flight when a stop string already ended this sample
            event = _event(j, d, detoks[j])
            if event.finish_reason is not None:
                running.discard(d.request_id)
                if d.finish_reason is None:  # a stop string: the engine must stop too
                    background.spawn(_abort(engine, [d.request_id]))
            yield event
    finally:
        for rid in sample_ids:
            deltas.queues.pop(rid, None)
        if running:  # detached: this request may be cancelled (client gone), its abort not
            background.spawn(_abort(engine, sorted(running)))


async def _abort(engine: Any, request_ids: list[str]) -> None:
    await engine.abort.remote(request_ids)


def _rejection_error(rejection: Rejection) -> Exception:
    if rejection.overloaded:
        return overloaded(rejection.message)
    return bad_request(rejection.message, rejection.param)


def _event(index: int, d: RequestDelta, detok: IncrementalDetokenizer) -> SampleEvent:
    out = detok.add_tokens(d.new_token_ids)
    text, stop, used = out.text, out.stop_matched, out.num_tokens_used
    finish = "stop" if stop is not None else d.finish_reason
    if finish is not None and stop is None:
        tail = detok.finish()
        text += tail.text
        used = tail.num_tokens_used
        if tail.stop_matched is not None:
            finish = "stop"
    if finish == "abort":
        finish = "stop"
    return SampleEvent(index, text, d.new_token_ids, d.new_logprobs, finish, used,
                       d.num_cached_tokens)  # fmt: skip
