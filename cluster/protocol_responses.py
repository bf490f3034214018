"""OpenAI's response bodies for completions, chat completions and model listing.

Serialize with `model_dump(mode="json")` / `model_dump_json()`: the key sets are OpenAI's (nulls
included where OpenAI sends them). Two rules the serializers enforce:
- a chat delta carries only the keys that are set (`{"role": "assistant", "content": ""}` first,
  then `{"content": "..."}`, then `{}` with the finish reason);
- a stream chunk has a `usage` key only when the constructor was given `usage=` (None on every
  chunk but the last when the client asked for `stream_options.include_usage`).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]

# vLLM's floor for logprobs: JSON has no -inf, and -9999 is exp() == 0 all the same.
MIN_LOGPROB = -9999.0

SSE_DONE = "data: [DONE]\n\n"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else MIN_LOGPROB


Logprob = Annotated[float, AfterValidator(_finite)]


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def chat_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


def sse_event(message: BaseModel) -> str:
    """One server-sent event carrying `message` as JSON."""
    return f"data: {message.model_dump_json()}\n\n"


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(
        cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None
    ) -> UsageInfo:
        details = None
        if cached_tokens is not None:
            details = PromptTokensDetails(cached_tokens=cached_tokens)
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
        )


class _Chunk(BaseModel):
    usage: UsageInfo | None = None

    @model_serializer(mode="wrap")
    def _usage_only_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        usage = data.pop("usage", None)  # re-added last, where OpenAI puts it
        if self.usage is not None or "usage" in self.model_fields_set:
            data["usage"] = usage
        return data


class CompletionLogprobs(BaseModel):
    """Parallel lists, one entry per generated token; `text_offset` is the character offset of
    each token in the choice's text (from the start of the prompt when echoing)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[Logprob | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, Logprob] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    """`finish_reason` is None only in stream chunks before the choice's last one."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionChunk(_Chunk):
    """One streamed event of a completion; OpenAI gives it the same shape and `object` as
    `Completion`. All chunks of a stream share `id` and `created`."""

    id: str = Field(default_factory=completion_id)
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: Logprob
    bytes: list[int] | None = None

    @classmethod
    def of(cls, token: str, logprob: float) -> TopLogprob:
        return cls(token=token, logprob=logprob, bytes=list(token.encode("utf-8", "replace")))


class TokenLogprob(BaseModel):
    token: str
    logprob: Logprob
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=chat_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_set_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Chunk):
    """One streamed event of a chat completion; all chunks of a stream share `id` and
    `created`. The usage chunk has `choices=[]`."""

    id: str = Field(default_factory=chat_completion_id)
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "raylight"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)
