"""One streaming request to an OpenAI-compatible server, timed chunk by chunk.

Requests ask for `stream: true` with `stream_options.include_usage`, so the last chunk carries
`usage`; its `completion_tokens` is the output length, else the number of content chunks is.
Any failure (HTTP status other than 200, an `error` object in the stream, a stream without
content, a connection error or timeout) becomes a failed `RequestOutcome` with the error text;
nothing is raised.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from raylight.benchmarks.serve_metrics import RequestOutcome
from raylight.benchmarks.serve_workload import SampledRequest

_MAX_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """Where and how to send: the full endpoint URL and the fields every request shares."""

    url: str
    chat: bool  # /v1/chat/completions (messages) rather than /v1/completions (prompt)
    model: str
    api_key: str | None = None
    ignore_eos: bool = True
    temperature: float = 0.0

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def payload(self, req: SampledRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.chat:
            body["messages"] = [{"role": "user", "content": req.prompt}]
            body["max_completion_tokens"] = req.output_len
        else:
            body["prompt"] = req.prompt
            body["max_tokens"] = req.output_len
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


def chunk_text(chunk: dict[str, Any], chat: bool) -> str:
    """The generated text a streamed chunk carries ("" for role, usage and empty chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if not chat:
        return choices[0].get("text") or ""
    delta = choices[0].get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


def _error_text(chunk: dict[str, Any]) -> str:
    err = chunk["error"]
    message = err.get("message", err) if isinstance(err, dict) else err
    return f"error in stream: {message}"[:_MAX_ERROR_CHARS]


async def send_request(
    session: aiohttp.ClientSession, target: ApiTarget, req: SampledRequest
) -> RequestOutcome:
    """Send `req` and time its stream; never raises for server or network failures."""
    content_times: list[float] = []
    usage: dict[str, Any] = {}
    body, headers = target.payload(req), target.headers()
    start = time.perf_counter()
    try:
        async with session.post(target.url, json=body, headers=headers) as r:
            if r.status != 200:
                text = (await r.text())[:_MAX_ERROR_CHARS]
                return RequestOutcome(False, req.prompt_len, error=f"HTTP {r.status}: {text}")
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, SSE comments, event names
                data = line[len(b"data:") :].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return RequestOutcome(False, req.prompt_len, error=_error_text(chunk))
                if chunk_text(chunk, target.chat):
                    content_times.append(time.perf_counter())
                usage = chunk.get("usage") or usage
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return RequestOutcome(False, req.prompt_len, error=f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if not content_times:
        return RequestOutcome(False, req.prompt_len, error="the stream had no content")
    return RequestOutcome(
        success=True,
        prompt_len=int(usage.get("prompt_tokens") or req.prompt_len),
        output_tokens=int(usage.get("completion_tokens") or len(content_times)),
        ttft_s=content_times[0] - start,
        e2e_s=end - start,
        itl_s=tuple(b - a for a, b in zip(content_times, content_times[1:])),
    )
