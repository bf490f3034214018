"""The OpenAI-compatible HTTP ingress: validate, template, tokenize, route; detokenize the
stream. It never blocks an engine: token ids in, text out, all on its own event loop."""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's wrapper.
import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from raylight.cluster.app_config import AppConfig
from raylight.cluster.detached import DetachedTasks
from raylight.cluster.errors import (
    OpenAIError,
    from_request_rejected,
    invalid_api_key,
    model_not_found,
)
from raylight.cluster.generation import DeltaRouter, SampleEvent, start_samples
from raylight.cluster.http_edge import (
    STATUS_CLIENT_CLOSED,
    install_error_handlers,
    read_body,
    sse_response,
)
from raylight.cluster.metrics import CONTENT_TYPE, ServingMetrics
from raylight.cluster.openapi_bodies import document_request_bodies
from raylight.cluster.params import detokenize_options_from, sampling_params_from
from raylight.cluster.prompts import chat_prompt_ids, detokenize, tokenize
from raylight.cluster.protocol_base import parse_request
from raylight.cluster.protocol_requests import ChatCompletionRequest, CompletionRequest
from raylight.cluster.protocol_responses import (
    ModelCard,
    ModelList,
    chat_completion_id,
    completion_id,
)
from raylight.cluster.protocol_tokenize import DetokenizeRequest, parse_tokenize_request
from raylight.cluster.request_trace import RequestTrace
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
install_error_handlers(api)
document_request_bodies(api)

Handler = Callable[[bytes, RequestTrace], Awaitable[Response]]


@serve.ingress(api)
class OpenAIIngress:
    """Made a deployment (replicas) by `raylight.cluster.app`."""

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
        self.metrics = ServingMetrics(self.model_name)
        self.background = DetachedTasks()
        self._subscriptions: list[asyncio.Task] = []

    # ---- plumbing -------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if not self._subscriptions:
            for engine in self.engines:  # not tied to the request that happens to start them
                self._subscriptions.append(self.background.spawn(self._consume(engine)))

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

    async def _body(self, request: Request) -> bytes:
        self._authorize(request)
        return await read_body(request, self.config.max_request_body_bytes)

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

    async def _start(
        self, prompts: list[list[int]], req: Any, params: list[SamplingParams]
    ) -> list[AsyncGenerator[SampleEvent, None]]:
        """Routes each prompt and adds its samples now (so refusals come before the response);
        if one is refused, the ones already started are aborted."""
        started: list[AsyncGenerator[SampleEvent, None]] = []
        try:
            for prompt_ids, sp in zip(prompts, params):
                index = await self.router.pick.remote(prompt_ids)
                started.append(await start_samples(
                    ingress_id=self.ingress_id,
                    request_id=uuid.uuid4().hex,
                    prompt_token_ids=prompt_ids,
                    params=sp,
                    text_options=detokenize_options_from(req),
                    tokenizer=self.tokenizer,
                    engine=self.engines[index],
                    deltas=self.deltas,
                    background=self.background,
                ))  # fmt: skip
        except BaseException:
            for stream in started:
                await stream.aclose()
            raise
        return started

    async def _generation(
        self, request: Request, trace: RequestTrace, handler: Handler
    ) -> Response:
        """Runs `handler` and records how the request ended (a stream records itself)."""
        try:
            response = await handler(await self._body(request), trace)
        except OpenAIError as exc:
            self._finish(trace, exc.status)
            raise
        except asyncio.CancelledError:
            self._finish(trace, STATUS_CLIENT_CLOSED)
            raise
        except Exception:
            self._finish(trace, 500)
            raise
        if not isinstance(response, StreamingResponse):
            self._finish(trace, response.status_code)
        return response

    def _finish(self, trace: RequestTrace, status: int) -> None:
        trace.finish(str(status), self.metrics, log)

    # ---- endpoints ------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> Response:
        return Response(status_code=200)

    @api.get("/metrics")
    async def metrics_text(self) -> Response:
        self._subscribe()  # engines report load once an ingress has subscribed
        loads = await asyncio.gather(*(engine.load.remote() for engine in self.engines))
        return Response(self.metrics.render(loads), media_type=CONTENT_TYPE)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        card = ModelCard(id=self.model_name, max_model_len=self.max_model_len)
        return JSONResponse(ModelList(data=[card]).model_dump(mode="json"))

    @api.post("/tokenize")
    async def tokenize(self, request: Request) -> JSONResponse:
        req = parse_tokenize_request(await self._body(request))
        if req.model is not None and req.model != self.model_name:
            raise model_not_found(req.model)
        out = tokenize(self.tokenizer, req, self.max_model_len)
        return JSONResponse(out.model_dump(mode="json", exclude_none=True))

    @api.post("/detokenize")
    async def detokenize(self, request: Request) -> JSONResponse:
        req = parse_request(DetokenizeRequest, await self._body(request))
        if req.model is not None and req.model != self.model_name:
            raise model_not_found(req.model)
        out = detokenize(self.tokenizer, req, self.vocab_size)
        return JSONResponse(out.model_dump(mode="json"))

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        trace = RequestTrace(completion_id(), "completions")
        return await self._generation(request, trace, self._completions)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        trace = RequestTrace(chat_completion_id(), "chat_completions")
        return await self._generation(request, trace, self._chat_completions)

    async def _completions(self, body: bytes, trace: RequestTrace) -> Response:
        req = parse_request(CompletionRequest, body)
        self._check_model(req.model)
        prompts = [
            p if isinstance(p, list) else self.tokenizer.encode(p) for p in req.prompts()
        ]
        params = [self._params(p, req) for p in prompts]  # all checked before any stream starts
        trace.prompt_tokens = sum(len(p) for p in prompts)
        started = await self._start(prompts, req, params)
        streams = [trace.observe(i, s) for i, s in enumerate(started)]
        args = (req, prompts, streams, self.tokenizer, self.model_name, trace.request_id)
        if req.stream:
            return sse_response(completion_chunks(*args), lambda s: self._finish(trace, s))
        out = await completion_response(*args)
        return JSONResponse(out.model_dump(mode="json"))

    async def _chat_completions(self, body: bytes, trace: RequestTrace) -> Response:
        req = parse_request(ChatCompletionRequest, body)
        self._check_model(req.model)
        prompt = chat_prompt_ids(
            self.tokenizer,
            req.template_messages(),
            add_generation_prompt=req.add_generation_prompt,
            template_kwargs=req.chat_template_kwargs,
        )
        trace.prompt_tokens = len(prompt)
        (started,) = await self._start([prompt], req, [self._params(prompt, req)])
        stream = trace.observe(0, started)
        args = (req, prompt, stream, self.tokenizer, self.model_name, trace.request_id)
        if req.stream:
            return sse_response(chat_chunks(*args), lambda s: self._finish(trace, s))
        out = await chat_response(*args)
        return JSONResponse(out.model_dump(mode="json"))
