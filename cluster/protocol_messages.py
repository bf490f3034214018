"""Chat messages as OpenAI's chat API sends them, and their flattening for a chat template.

Only text is served: content is a string or a list of `{"type": "text", "text": ...}` parts;
image, audio and file parts are refused with a 400 naming the part.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from raylight.cluster.protocol_base import RequestModel, reject

_MEDIA_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "file"})

Role = Literal["system", "developer", "user", "assistant", "tool"]


class ContentPart(RequestModel):
    """One part of a message's content. Any `type` parses; `ChatMessage` refuses all but text,
    so the client learns which part is unsupported rather than a union mismatch."""

    type: str
    text: str | None = None


class ChatMessage(RequestModel):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # An assistant turn of the history may carry tool calls, a tool turn answers one by id;
    # both pass through to the chat template unchanged.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_content(self) -> ChatMessage:
        if self.content is None:
            if self.role != "assistant":
                reject(f"a {self.role} message needs content", "content")
            return self
        if isinstance(self.content, str):
            return self
        for i, part in enumerate(self.content):
            if part.type in _MEDIA_PARTS:
                kind = "image" if "image" in part.type else part.type
                reject(
                    f"'{part.type}' content is not supported: this server serves text-only "
                    f"models, so {kind} inputs cannot be used; send text parts only",
                    f"content[{i}].type",
                )
            if part.type != "text":
                reject(
                    f"content part type '{part.type}' is not supported; use 'text'",
                    f"content[{i}].type",
                )
            if part.text is None:
                reject("a text content part needs 'text'", f"content[{i}].text")
        return self

    def text(self) -> str:
        """The content as one string; text parts are joined with newlines, as vLLM does for
        chat templates that take string content."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content)

    def template_dict(self) -> dict[str, Any]:
        """The message as `tokenizer.apply_chat_template` takes it (string content)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


# A conversation to continue: at least one message.
Messages = Annotated[list[ChatMessage], Field(min_length=1)]
