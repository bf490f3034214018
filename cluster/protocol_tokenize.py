"""vLLM's `/tokenize` and `/detokenize` bodies: a prompt or a conversation to token ids (with
the chat template applied), and token ids back to text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import from_json

from raylight.cluster.errors import bad_request
from raylight.cluster.protocol_base import RequestModel, parse_request
from raylight.cluster.protocol_messages import Messages
from raylight.cluster.protocol_requests import TokenId


class TokenizeCompletionRequest(RequestModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(RequestModel):
    model: str | None = None
    messages: Messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # The chat template writes BOS itself (as for chat completions).
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    def template_messages(self) -> list[dict[str, Any]]:
        return [message.template_dict() for message in self.messages]


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


def parse_tokenize_request(body: bytes | str | Mapping[str, Any]) -> TokenizeRequest:
    """A chat request when the body has `messages`, else a prompt request (as vLLM decides);
    raises a 400 `OpenAIError` naming the first bad field."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = from_json(body)
        except ValueError as exc:
            raise bad_request(f"We could not parse the JSON body of your request: {exc}") from None
    if isinstance(data, Mapping) and "messages" in data:
        return parse_request(TokenizeChatRequest, data)
    return parse_request(TokenizeCompletionRequest, data)
