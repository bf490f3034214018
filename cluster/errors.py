"""OpenAI's error format: `{"error": {"message", "type", "param", "code"}}` with its HTTP status.

Every problem the ingress reports to a client goes through `OpenAIError`, so clients (the
official `openai` package included) see the same shapes as from api.openai.com. The converters
turn our own exceptions (pydantic validation, engine parameter checks) into 400s naming the
offending request field as `param`, written like OpenAI's: `messages[0].content[1].type`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from raylight.engine.errors import RequestRejectedError
from raylight.engine.sampling_params import SamplingParamsError

# Error codes OpenAI sends (with `type`), as far as a self-hosted server has use for them.
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

# The pydantic error type our validators raise; its ctx holds `message` and optionally `param`
# (relative to the error's location, so a nested model can name its own sub-field).
CUSTOM_ERROR_TYPE = "raylight_invalid_request"

# Location parts that are pydantic's names for union members ('str', 'list[int]', ...) rather
# than request fields: field names are lower snake case, and no field is called like a type.
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


class OpenAIError(Exception):
    """An error for the client, rendered with `body()` and sent with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def __repr__(self) -> str:
        return (
            f"OpenAIError(status={self.status}, message={self.message!r}, type={self.type!r}, "
            f"param={self.param!r}, code={self.code!r})"
        )


def error_body(
    message: str,
    type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The JSON body of an OpenAI error response; all four keys are always present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, INVALID_REQUEST, param, code)


def invalid_api_key(message: str = "Incorrect API key provided.") -> OpenAIError:
    # OpenAI answers a wrong key with 401 and type invalid_request_error, code invalid_api_key.
    return OpenAIError(401, message, INVALID_REQUEST, None, "invalid_api_key")


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        INVALID_REQUEST,
        "model",
        "model_not_found",
    )


def not_found(message: str) -> OpenAIError:
    return OpenAIError(404, message, INVALID_REQUEST, None, "not_found")


def rate_limited(message: str) -> OpenAIError:
    # OpenAI's 429s carry type "requests" (or "tokens") and code rate_limit_exceeded.
    return OpenAIError(429, message, "requests", None, "rate_limit_exceeded")


def server_error(message: str = "The server had an error while processing your request.") -> (
    OpenAIError
):
    return OpenAIError(500, message, SERVER_ERROR)


def overloaded(message: str = "The server is overloaded; please retry later.") -> OpenAIError:
    return OpenAIError(503, message, SERVER_ERROR)


def param_path(loc: Sequence[int | str]) -> str | None:
    """`('messages', 0, 'content', 'list[ContentPart]', 1)` -> `'messages[0].content[1]'`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_member(part):
            path += f".{part}" if path else part
    return path or None


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """A 400 for the first error of `ValidationError.errors()` (or FastAPI's
    `RequestValidationError.errors()`, whose locations start with "body")."""
    if not errors:
        return bad_request("invalid request")
    error, loc = _pick(errors)
    ctx = error.get("ctx") or {}
    kind = error.get("type", "")
    if kind == CUSTOM_ERROR_TYPE:
        param = param_path((*loc, *_split_param(ctx.get("param"))))
        return bad_request(str(ctx.get("message", error.get("msg", ""))), param)
    param = param_path(loc)
    if kind == "json_invalid":
        return bad_request(f"We could not parse the JSON body of your request: {error['msg']}")
    if kind in ("model_type", "model_attributes_type", "dict_type") and param is None:
        return bad_request("The request body must be a JSON object.")
    if kind == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param)
    got = _short_repr(error.get("input"))
    union_at = next((i for i, part in enumerate(loc) if _is_union_member(part)), None)
    if union_at is not None and kind.endswith("_type"):
        # No member of a union (`prompt`: text, texts, token ids, ...) matched: name the union,
        # since which member the client meant is a guess.
        param = param_path(loc[:union_at])
        return bad_request(f"Invalid type for '{param}': no accepted form matches {got}.", param)
    return bad_request(f"Invalid value for '{param}': {error.get('msg', '')} (got {got}).", param)


def _pick(errors: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], tuple[int | str, ...]]:
    """The first error, unless it is a type mismatch in one member of a union and another
    member failed on a value (`prompt: [-1]` is token ids with a negative id, not a bad
    string): then that one, as it says what to fix."""
    locs = [_body_loc(error) for error in errors]
    first = locs[0]
    union_at = next((i for i, part in enumerate(first) if _is_union_member(part)), None)
    if union_at is None or not errors[0].get("type", "").endswith("_type"):
        return errors[0], first
    for error, loc in zip(errors, locs):
        if loc[:union_at] == first[:union_at] and not error.get("type", "").endswith("_type"):
            return error, loc
    return errors[0], first


def _body_loc(error: Mapping[str, Any]) -> tuple[int | str, ...]:
    loc = tuple(error.get("loc", ()))
    return loc[1:] if loc[:1] == ("body",) else loc


def _is_union_member(part: int | str) -> bool:
    return isinstance(part, str) and (not _FIELD_NAME.fullmatch(part) or part in _TYPE_NAMES)


def from_validation_error(exc: ValidationError) -> OpenAIError:
    return from_validation_errors(exc.errors(include_url=False))


def from_sampling_params_error(
    exc: SamplingParamsError, rename: Mapping[str, str] | None = None
) -> OpenAIError:
    """A 400 naming the parameter; `rename` maps engine names to the request's names (a chat
    request's `top_logprobs` is the engine's `logprobs`)."""
    param = (rename or {}).get(exc.param, exc.param)
    message = str(exc)
    if exc.param != param and message.startswith(exc.param):
        message = param + message[len(exc.param):]
    return bad_request(message, param)


def from_request_rejected(exc: RequestRejectedError) -> OpenAIError:
    return bad_request(str(exc), exc.param)


def _split_param(param: object) -> tuple[int | str, ...]:
    """'content[1].type' -> ('content', 1, 'type'), so it joins a pydantic location."""
    if not isinstance(param, str) or not param:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", param))


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def payload_too_large(limit_bytes: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body is larger than this server accepts ({limit_bytes} bytes).",
        INVALID_REQUEST,
        None,
        "payload_too_large",
    )
