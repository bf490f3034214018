"""One engine replica's core loop: schedule -> execute -> update, token ids in and out.

No tokenizer, no text: callers hand in token ids and get `RequestDelta`s back.

With `async_scheduling`, a step schedules and launches the next batch before it waits for the
one on the device, so the host's scheduling and batch building hide under the device's work;
each `step()` then returns the deltas of the batch launched one step earlier.
"""

from __future__ import annotations

import random
import time

from raylight.engine.admission import make_policy
from raylight.engine.batch import Batch, RequestDelta
from raylight.engine.config import EngineConfig
from raylight.engine.errors import RequestRejectedError
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.model_runner import LaunchedStep, ModelRunner, StepResult
from raylight.engine.prefix_cache import PrefixCache
from raylight.engine.request import Request
from raylight.engine.sampling_params import SamplingParams
from raylight.engine.scheduler import Scheduler


class EngineCore:
    def __init__(self, config: EngineConfig, runner: ModelRunner) -> None:
        self.config = config
        self.runner = runner
        allocator = SlotAllocator(runner.num_slots)
        self.scheduler = Scheduler(
            config.scheduler,
            allocator,
            make_policy(config.scheduler.admission_policy),
            PrefixCache(allocator) if config.enable_prefix_caching else None,
        )
        self.requests: dict[str, Request] = {}
        self._seed_rng = random.Random(config.seed)
        self._launched: LaunchedStep | None = None  # async scheduling: on the device, not updated
        self.num_scheduled_ahead = 0  # batches launched before the previous one was updated

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished or self._launched is not None

    def make_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        sample_index: int = 0,
    ) -> Request:
        """Validates and resolves a request without touching engine state (any thread may call
        it); raises `RequestRejectedError` with a message a user can act on."""
        max_tokens = check_prompt(
            prompt_token_ids,
            params.max_tokens,
            self.config.scheduler.max_model_len,
            self.config.arch.vocab_size,
        )
        if params.seed is not None:
            seed = (params.seed + sample_index) % 2**63
        else:
            seed = self._seed_rng.getrandbits(63)
        eos = () if params.ignore_eos else self.config.arch.eos_token_ids
        return Request(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            max_tokens=max_tokens,
            sample_seed=seed,
            stop_token_ids=frozenset(eos) | frozenset(params.stop_token_ids),
            arrival_time=time.monotonic(),
        )

    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise RequestRejectedError(f"request id {req.request_id!r} is already running")
        self.requests[req.request_id] = req
        self.scheduler.add(req)

    def abort(self, request_id: str) -> bool:
        """Aborts a request between steps; returns False if it is unknown or already done."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        self.scheduler.abort(req)
        return True

    def step(self) -> list[RequestDelta]:
        if not self.config.async_scheduling:
            batch = self.scheduler.schedule()
            if batch is None:
                return []
            return self._update(batch, self.runner.execute(batch))
        running = self._launched
        if running is None:
            batch = self.scheduler.schedule()
            if batch is None:
                return []
            running = self.runner.launch(batch)
        self._launched = None
        if not running.needs_history:
            ahead = self.scheduler.schedule(ahead=True)
            if ahead is not None:
                self._launched = self.runner.launch(ahead, prev=running)
                self.num_scheduled_ahead += 1
        return self._update(running.batch, running.result())

    def _update(self, batch: Batch, result: StepResult) -> list[RequestDelta]:
        deltas = self.scheduler.update(batch, result.token_ids, result.logprobs)
        for d in deltas:
            if d.finish_reason is not None:
                del self.requests[d.request_id]
        return deltas


def check_prompt(
    prompt_token_ids: list[int], max_tokens: int | None, max_model_len: int, vocab_size: int
) -> int:
    """Checks that the prompt fits the context with room for `max_tokens` (None: the rest of the
    context); returns the resolved max_tokens. The ingress calls it too, so that a bad request
    is refused before a stream starts."""
    n_prompt = len(prompt_token_ids)
    if n_prompt == 0:
        raise RequestRejectedError("the prompt is empty", param="prompt")
    if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab_size:
        raise RequestRejectedError(f"prompt token ids must be in [0, {vocab_size})", "prompt")
    if n_prompt >= max_model_len:
        raise RequestRejectedError(
            f"This model's maximum context length is {max_model_len} tokens. However, the "
            f"prompt has {n_prompt} tokens, leaving no room for output.",
            param="prompt",
        )
    if max_tokens is None:
        return max_model_len - n_prompt
    if n_prompt + max_tokens > max_model_len:
        raise RequestRejectedError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {n_prompt + max_tokens} tokens ({n_prompt} in the prompt, "
            f"{max_tokens} in the completion).",
            param="max_tokens",
        )
    return max_tokens
