"""The OpenAI-compatible HTTP ingress: validate, template, tokenize, route; detokenize the
stream. It never blocks an engine: token ids in, text out, all on its own event loop."""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's wrapper.
import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from raylight.cluster.app_config import AppConfig
from raylight.cluster.errors import (
    OpenAIError,
    from_request_rejected,
    invalid_api_key,
    model_not_found,
    not_found,
)
from raylight.cluster.generation import DeltaRouter, SampleEvent, generate_samples
from raylight.cluster.params import detokenize_options_from, sampling_params_from
from raylight.cluster.protocol_base import parse_request
from raylight.cluster.protocol_requests import ChatCompletionRequest, CompletionRequest
from raylight.cluster.protocol_responses import SSE_DONE, ModelCard, ModelList
from raylight.cluster.responses import (
    chat_chunks,
    chat_response,
    completion_chunks,
    completion_response,
)
from raylight.engine.engine_core import check_prompt
from raylight.engine.errors import RequestRejectedError
from raylight.engine.sampling_params import SamplingParams

log = logging.getLogger("raylight.ingress")
api = FastAPI(title="raylight", description="OpenAI-compatible LLM serving on Ray")


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    err = not_found(f"{exc.detail}") if exc.status_code == 404 else OpenAIError(
        exc.status_code, str(exc.detail), "invalid_request_error"
    )
    return JSONResponse(err.body(), status_code=err.status)


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except OpenAIError as exc:  # after the 200 went out: report in-stream, as OpenAI does
            yield f"data: {json.dumps(exc.body())}\n\n"
        yield SSE_DONE

    return StreamingResponse(body(), media_type="text/event-stream")


def _log_done(out: Any, start: float) -> None:
    usage = out.usage
    log.info(
        "request %s done: prompt_tokens=%d completion_tokens=%d total_s=%.3f",
        out.id, usage.prompt_tokens, usage.completion_tokens, time.monotonic() - start,
    )  # fmt: skip


@serve.ingress(api)
class OpenAIIngress:
    """Made a deployment (replicas, queue limit) by `raylight.cluster.app`."""

    def __init__(
        self,
        config: AppConfig,
        model_dir: str,
        max_model_len: int,
        vocab_size: int,
        engines: list,
        router: Any,
    ) -> None:
        from raylight.engine.tokenizer import load_tokenizer

        self.config = config
        self.model_name = config.served_model_name
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.tokenizer = load_tokenizer(model_dir)
        self.engines = engines
        self.router = router
        self.ingress_id = uuid.uuid4().hex
        self.deltas = DeltaRouter()
        self._subscriptions: list[asyncio.Task] = []

    # ---- plumbing -------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if not self._subscriptions:
            for engine in self.engines:
                task = asyncio.get_running_loop().create_task(self._consume(engine))
                self._subscriptions.append(task)

    async def _consume(self, engine: Any) -> None:
        while True:
            try:
                stream = engine.options(stream=True).subscribe.remote(self.ingress_id)
                async for batch in stream:
                    self.deltas.deliver(batch)
            except Exception:  # noqa: BLE001 - keep listening; the engine may come back
                log.exception("engine delta stream failed; resubscribing")
                await asyncio.sleep(0.5)

    def _authorize(self, request: Request) -> None:
        """401 unless the bearer key matches (when one is set); checked before the body."""
        if self.config.api_key is not None:
            auth = request.headers.get("authorization", "")
            if auth != f"Bearer {self.config.api_key}":
                raise invalid_api_key()

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise model_not_found(model)
        self._subscribe()

    def _params(self, prompt_ids: list[int], req: Any) -> SamplingParams:
        """The engine's sampling parameters; refuses (400) what the engine would refuse, before
        any response starts."""
        params = sampling_params_from(req, self.max_model_len)
        try:
            check_prompt(prompt_ids, params.max_tokens, self.max_model_len, self.vocab_size)
        except RequestRejectedError as exc:
            raise from_request_rejected(exc) from None
        return params

    async def _samples(
        self, prompt_ids: list[int], req: Any, params: SamplingParams
    ) -> AsyncIterator[SampleEvent]:
        index = await self.router.pick.remote(prompt_ids)
        async for event in generate_samples(
            ingress_id=self.ingress_id,
            request_id=uuid.uuid4().hex,
            prompt_token_ids=prompt_ids,
            params=params,
            text_options=detokenize_options_from(req),
            tokenizer=self.tokenizer,
            engine=self.engines[index],
            deltas=self.deltas,
        ):
            yield event

    # ---- endpoints ------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> Response:
        return Response(status_code=200)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        card = ModelCard(id=self.model_name, max_model_len=self.max_model_len)
        return JSONResponse(ModelList(data=[card]).model_dump(mode="json"))

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        req = parse_request(CompletionRequest, await request.body())
        self._check_model(req.model)
        prompts = [
            p if isinstance(p, list) else self.tokenizer.encode(p) for p in req.prompts()
        ]
        params = [self._params(p, req) for p in prompts]  # all checked before any stream starts
        streams = [self._samples(p, req, sp) for p, sp in zip(prompts, params)]
        start = time.monotonic()
        if req.stream:
            body = completion_chunks(req, prompts, streams, self.tokenizer, self.model_name)
            return _sse(body)
        out = await completion_response(req, prompts, streams, self.tokenizer, self.model_name)
        _log_done(out, start)
        return JSONResponse(out.model_dump(mode="json"))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        req = parse_request(ChatCompletionRequest, await request.body())
        self._check_model(req.model)
        prompt = list(
            self.tokenizer.apply_chat_template(
                req.template_messages(),
                add_generation_prompt=req.add_generation_prompt,
                tokenize=True,
                return_dict=False,
                **(req.chat_template_kwargs or {}),
            )
        )
        stream = self._samples(prompt, req, self._params(prompt, req))
        start = time.monotonic()
        if req.stream:
            return _sse(chat_chunks(req, prompt, stream, self.tokenizer, self.model_name))
        out = await chat_response(req, prompt, stream, self.tokenizer, self.model_name)
        _log_done(out, start)
        return JSONResponse(out.model_dump(mode="json"))
