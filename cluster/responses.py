"""Sample events -> OpenAI completion / chat completion bodies and SSE chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from raylight.cluster.generation import SampleEvent
from raylight.cluster.protocol_requests import ChatCompletionRequest, CompletionRequest
from raylight.cluster.protocol_responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
    sse_event,
)

Samples = AsyncIterator[SampleEvent]


async def _merge(streams: list[Samples], n: int) -> AsyncIterator[tuple[int, SampleEvent]]:
    """Events of several prompts' streams as they come; choice index = prompt * n + sample."""
    if len(streams) == 1:
        async for ev in streams[0]:
            yield ev.index, ev
        return
    queue: asyncio.Queue[tuple[int, SampleEvent] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, stream: Samples) -> None:
        try:
            async for ev in stream:
                queue.put_nowait((i * n + ev.index, ev))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        done = 0
        while done < len(tasks):
            item = await queue.get()
            if item is None:
                done += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _UsageCounter:
    """`usage` of a response with `n` choices per prompt: output tokens per choice; cached
    prompt tokens per prompt (its samples share the prompt, so the largest hit counts)."""

    def __init__(self, prompt_lens: list[int], n: int) -> None:
        self.prompt_lens = prompt_lens
        self.n = n
        self.used = [0] * (len(prompt_lens) * n)
        self.cached = [0] * len(prompt_lens)

    def add(self, choice: int, ev: SampleEvent) -> None:
        self.used[choice] = ev.num_output_tokens
        if ev.num_cached_tokens is not None:
            p = choice // self.n
            self.cached[p] = max(self.cached[p], ev.num_cached_tokens)

    def usage(self) -> UsageInfo:
        return UsageInfo.of(sum(self.prompt_lens), sum(self.used), sum(self.cached))


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _completion_logprobs(ev: SampleEvent, tokenizer: Any, offset: int) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for tok, (lp, top) in zip(ev.token_ids, ev.logprobs or []):
        text = _token_text(tokenizer, tok)
        out.tokens.append(text)
        out.token_logprobs.append(lp)
        out.top_logprobs.append({_token_text(tokenizer, t): v for t, v in top} or None)
        out.text_offset.append(offset)
        offset += len(text)
    return out


def _chat_logprobs(ev: SampleEvent, tokenizer: Any) -> ChatLogprobs:
    content = []
    for tok, (lp, top) in zip(ev.token_ids, ev.logprobs or []):
        text = _token_text(tokenizer, tok)
        tops = [TopLogprob.of(_token_text(tokenizer, t), v) for t, v in top]
        entry = TopLogprob.of(text, lp)
        content.append(
            TokenLogprob(token=entry.token, logprob=lp, bytes=entry.bytes, top_logprobs=tops)
        )
    return ChatLogprobs(content=content)


# ---- completions ----------------------------------------------------------------------------


async def completion_response(
    req: CompletionRequest, prompts: list[list[int]], streams: list[Samples], tokenizer: Any,
    model: str, response_id: str,
) -> Completion:  # fmt: skip
    n = req.n
    texts = [""] * (len(prompts) * n)
    finish: list[Any] = [None] * len(texts)
    counter = _UsageCounter([len(p) for p in prompts], n)
    logprobs = [CompletionLogprobs() if req.logprobs is not None else None for _ in texts]
    async for i, ev in _merge(streams, n):
        if logprobs[i] is not None:
            part = _completion_logprobs(ev, tokenizer, len(texts[i]))
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(logprobs[i], key).extend(getattr(part, key))
        texts[i] += ev.text
        counter.add(i, ev)
        finish[i] = ev.finish_reason or finish[i]
    if req.echo:
        texts = [tokenizer.decode(prompts[i // n]) + t for i, t in enumerate(texts)]
    choices = [
        CompletionChoice(index=i, text=t, logprobs=logprobs[i], finish_reason=finish[i])
        for i, t in enumerate(texts)
    ]
    return Completion(id=response_id, model=model, choices=choices, usage=counter.usage())


async def completion_chunks(
    req: CompletionRequest, prompts: list[list[int]], streams: list[Samples], tokenizer: Any,
    model: str, response_id: str,
) -> AsyncIterator[str]:  # fmt: skip
    cid, created, n = response_id, int(time.time()), req.n
    usage_field: dict[str, Any] = {"usage": None} if req.include_usage() else {}
    counter = _UsageCounter([len(p) for p in prompts], n)
    if req.echo:
        for i in range(len(counter.used)):
            text = tokenizer.decode(prompts[i // n])
            choice = CompletionChoice(index=i, text=text)
            yield sse_event(CompletionChunk(id=cid, created=created, model=model,
                                            choices=[choice], **usage_field))  # fmt: skip
    async for i, ev in _merge(streams, n):
        counter.add(i, ev)
        lp = _completion_logprobs(ev, tokenizer, 0) if req.logprobs is not None else None
        choice = CompletionChoice(index=i, text=ev.text, logprobs=lp,
                                  finish_reason=ev.finish_reason)  # fmt: skip
        yield sse_event(CompletionChunk(id=cid, created=created, model=model, choices=[choice],
                                        **usage_field))  # fmt: skip
    if req.include_usage():
        yield sse_event(CompletionChunk(id=cid, created=created, model=model, choices=[],
                                        usage=counter.usage()))  # fmt: skip


# ---- chat -----------------------------------------------------------------------------------


async def chat_response(
    req: ChatCompletionRequest, prompt: list[int], stream: Samples, tokenizer: Any, model: str,
    response_id: str,
) -> ChatCompletion:  # fmt: skip
    n = req.n
    texts, finish = [""] * n, [None] * n
    counter = _UsageCounter([len(prompt)], n)
    content: list[list[TokenLogprob]] = [[] for _ in range(n)]
    async for i, ev in _merge([stream], n):
        texts[i] += ev.text
        finish[i] = ev.finish_reason or finish[i]
        counter.add(i, ev)
        if req.logprobs:
            content[i].extend(_chat_logprobs(ev, tokenizer).content or [])
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=texts[i]),
            logprobs=ChatLogprobs(content=content[i]) if req.logprobs else None,
            finish_reason=finish[i] or "stop",
        )
        for i in range(n)
    ]
    return ChatCompletion(id=response_id, model=model, choices=choices, usage=counter.usage())


async def chat_chunks(
    req: ChatCompletionRequest, prompt: list[int], stream: Samples, tokenizer: Any, model: str,
    response_id: str,
) -> AsyncIterator[str]:  # fmt: skip
    cid, created, n = response_id, int(time.time()), req.n
    usage_field: dict[str, Any] = {"usage": None} if req.include_usage() else {}

    def chunk(choice: ChatChunkChoice) -> str:
        return sse_event(ChatCompletionChunk(id=cid, created=created, model=model,
                                             choices=[choice], **usage_field))  # fmt: skip

    for i in range(n):
        yield chunk(ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")))
    counter = _UsageCounter([len(prompt)], n)
    async for i, ev in _merge([stream], n):
        counter.add(i, ev)
        lp = _chat_logprobs(ev, tokenizer) if req.logprobs else None
        delta = DeltaMessage(content=ev.text) if ev.text else DeltaMessage()
        yield chunk(ChatChunkChoice(index=i, delta=delta, logprobs=lp,
                                    finish_reason=ev.finish_reason))  # fmt: skip
    if req.include_usage():
        yield sse_event(ChatCompletionChunk(id=cid, created=created, model=model, choices=[],
                                            usage=counter.usage()))  # fmt: skip
