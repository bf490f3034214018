"""OpenAI's `/v1/completions` and `/v1/chat/completions` request bodies, validated.

Fields, names, ranges and defaults are OpenAI's; vLLM's extra sampling fields (top_k, min_p,
repetition_penalty, ignore_eos, min_tokens, stop_token_ids, skip_special_tokens,
include_stop_str_in_output, add_special_tokens, chat_template_kwargs) are accepted as vLLM's
server accepts them. Unknown fields are ignored; a JSON `null` means "use the default". Features
we do not serve (suffix, best_of != n, logit_bias, tools, non-text response formats, media
inputs, prompt logprobs) are refused with a 400 naming the field, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from pydantic import Field, field_validator, model_validator

from raylight.cluster.protocol_base import RequestModel, reject
from raylight.cluster.protocol_messages import Messages

# OpenAI: "Up to 4 sequences where the API will stop generating further tokens." vLLM sets no
# limit; we keep OpenAI's so a request valid here is valid there.
MAX_STOP_SEQUENCES = 4

TokenId = Annotated[int, Field(ge=0)]


class StreamOptions(RequestModel):
    include_usage: bool = False


class ResponseFormat(RequestModel):
    type: str


class _GenerationRequest(RequestModel):
    """The fields completions and chat completions share."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    # vLLM's extras; top_k 0 or -1 disables it.
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[TokenId] = Field(default_factory=list)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            reject(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        for i, text in enumerate(stops):
            if not text:
                reject("stop sequences must not be empty", f"[{i}]" if stops is stop else "")
        return stop

    @model_validator(mode="after")
    def _check_shared(self) -> _GenerationRequest:
        if self.stream_options is not None and not self.stream:
            reject("stream_options is only allowed when stream is true", "stream_options")
        if self.logit_bias:
            reject("logit_bias is not supported by this server", "logit_bias")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (and earlier chunks carry `usage: null`)."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_GenerationRequest):
    """`POST /v1/completions`. Several prompts give `len(prompts) * n` choices; choice
    `i * n + j` is sample j of prompt i, as OpenAI orders them."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    add_special_tokens: bool = True

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list):
            if not prompt:
                reject("prompt must not be an empty list")
            for i, item in enumerate(prompt):
                if isinstance(item, list) and not item:
                    reject("token prompts must not be empty", f"[{i}]")
        return prompt

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            reject("suffix is not supported by this server", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            reject("best_of is not supported by this server; leave it unset or equal to n",
                   "best_of")
        if self.echo and self.logprobs is not None:
            reject("echo with logprobs needs prompt logprobs, which this server does not "
                   "compute; drop one of the two", "echo")
        return self

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts as a list: strings, or token id lists (a list is never empty)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if isinstance(self.prompt[0], int):
            return [cast(list[int], self.prompt)]
        return cast("list[str] | list[list[int]]", self.prompt)


class ChatCompletionRequest(_GenerationRequest):
    """`POST /v1/chat/completions`. `max_completion_tokens` replaces the deprecated
    `max_tokens` and wins when both are set; neither means "up to the context length"."""

    messages: Messages
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    # The chat template writes BOS itself, so the tokenizer adds none by default (as vLLM).
    add_special_tokens: bool = False

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            reject("top_logprobs requires logprobs to be true", "top_logprobs")
        if self.response_format is not None and self.response_format.type != "text":
            reject(f"response_format type '{self.response_format.type}' is not supported; "
                   "only 'text' is", "response_format.type")
        if self.tools:
            reject("tools are not supported by this server yet", "tools")
        if self.functions:
            reject("functions are not supported by this server", "functions")
        if self.tool_choice not in (None, "none", "auto"):
            reject("tool_choice needs tools, which this server does not support yet",
                   "tool_choice")
        return self

    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else (
            self.max_tokens
        )

    def max_tokens_param(self) -> str:
        """The name of the field that set the output limit, for error messages."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def template_messages(self) -> list[dict[str, Any]]:
        return [message.template_dict() for message in self.messages]
