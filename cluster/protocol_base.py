"""What every request model shares: strict types, unknown fields ignored, null as "unset",
and `reject` for refusals that name the offending field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from raylight.cluster.errors import CUSTOM_ERROR_TYPE, from_validation_error

Model = TypeVar("Model", bound=BaseModel)


class RequestModel(BaseModel):
    # Types are checked strictly (no "2" for 2, no 1 for true), as OpenAI does; unknown fields
    # are ignored, as clients send newer or vendor-specific ones.
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # OpenAI's schema marks most parameters nullable, and SDKs send null for "unset".
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


def reject(message: str, param: str | None = None) -> NoReturn:
    """Fails validation with `message`; `param` is relative to the field or model being
    validated ("content[1].type", "[0]"; None: that location itself).
    `errors.from_validation_errors` turns it into a 400 with the full `param`."""
    raise PydanticCustomError(
        CUSTOM_ERROR_TYPE, "{message}", {"message": message, "param": param or ""}
    )


def parse_request(model: type[Model], body: bytes | str | Mapping[str, Any]) -> Model:
    """Validates a JSON body (raw bytes/str, or already decoded) as `model`; raises a 400
    `OpenAIError` naming the first bad field."""
    try:
        if isinstance(body, bytes | str):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
