"""The ingress parses request bodies itself (to check the API key first and to name the bad
field in OpenAI's error format), so FastAPI cannot see their models; this puts the pydantic
models' JSON schemas into `/openapi.json` so clients and schema-driven testers see them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from raylight.cluster.protocol_requests import ChatCompletionRequest, CompletionRequest
from raylight.cluster.protocol_tokenize import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)

_BODIES: dict[str, tuple[type[BaseModel], ...]] = {
    "/v1/completions": (CompletionRequest,),
    "/v1/chat/completions": (ChatCompletionRequest,),
    "/tokenize": (TokenizeCompletionRequest, TokenizeChatRequest),
    "/detokenize": (DetokenizeRequest,),
}
_ERROR = {"description": "OpenAI error JSON: {\"error\": {message, type, param, code}}"}


def _body_schema(models: tuple[type[BaseModel], ...], components: dict[str, Any]) -> Any:
    refs = []
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
    return refs[0] if len(refs) == 1 else {"anyOf": refs}


def document_request_bodies(api: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, description=api.description,
                routes=api.routes,
            )  # fmt: skip
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, models in _BODIES.items():
                op = schema["paths"][path]["post"]
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _body_schema(models, components)}},
                }
                op["responses"].update({"400": _ERROR, "401": _ERROR, "404": _ERROR,
                                        "413": _ERROR, "503": _ERROR})  # fmt: skip
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
