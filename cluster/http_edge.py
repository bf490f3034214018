"""The HTTP edge of the ingress: OpenAI-shaped errors for every failure, bounded body reads,
and server-sent-event responses that report how they ended."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylight.cluster.errors import OpenAIError, not_found, payload_too_large, server_error
from raylight.cluster.protocol_responses import SSE_DONE

log = logging.getLogger("raylight.ingress")

# A client that goes away before its response ends (nginx's convention; never sent).
STATUS_CLIENT_CLOSED = 499


def install_error_handlers(api: FastAPI) -> None:
    """Every error leaves as OpenAI's `{"error": {...}}` JSON with its HTTP status."""

    @api.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = not_found(f"{exc.detail}")
        else:
            err = OpenAIError(exc.status_code, str(exc.detail), "invalid_request_error")
        return JSONResponse(err.body(), status_code=err.status)

    @api.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        err = server_error()
        return JSONResponse(err.body(), status_code=err.status)


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed `limit_bytes`."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit_bytes:
        raise payload_too_large(limit_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise payload_too_large(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def sse_response(events: AsyncIterator[str], on_done: Callable[[int], None]) -> StreamingResponse:
    """Streams `events` then `[DONE]`. Errors after the 200 went out are sent in-stream, as
    OpenAI does. `on_done(status)` is called once at the end: 200, the error's status, or
    `STATUS_CLIENT_CLOSED` when the client went away."""

    async def body() -> AsyncIterator[str]:
        status = STATUS_CLIENT_CLOSED
        try:
            try:
                async for event in events:
                    yield event
                status = 200
            except OpenAIError as exc:
                status = exc.status
                yield f"data: {json.dumps(exc.body())}\n\n"
            except Exception as exc:  # noqa: BLE001 - a bug; the client still gets JSON
                log.error("unhandled error in a stream", exc_info=exc)
                status = 500
                yield f"data: {json.dumps(server_error().body())}\n\n"
            yield SSE_DONE
        finally:
            on_done(status)

    return StreamingResponse(body(), media_type="text/event-stream")
