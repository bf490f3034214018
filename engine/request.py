"""One generation request as the engine sees it: token ids in, token ids out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raylight.engine.prefix_cache import RadixNode
from raylight.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = enum.auto()  # queued, or preempted and waiting to recompute its KV
    RUNNING = enum.auto()  # holds a ReqToToken row and KV slots
    FINISHED = enum.auto()


class FinishReason(str, enum.Enum):
    STOP = "stop"  # a stop token was sampled
    LENGTH = "length"  # max_tokens or the context length was reached
    ABORT = "abort"  # the caller aborted the request


@dataclass(slots=True, eq=False)
class Request:
    """A request inside the engine. Only `Scheduler.update` (and abort) mutate it.

    Invariants: `num_computed_tokens` tokens of `prompt + output` have their K/V in the pool, at
    the slots in row `row` of the ReqToToken table; `num_computed_tokens <= num_tokens`;
    `num_tokens == len(prompt_token_ids) + len(output_token_ids)` (kept as a field because the
    scheduler reads it for every running request every step; `Scheduler.update` maintains it).

    Prefix cache (while running): slots `[0, num_prefix)` of the row are borrowed from the tree
    and pinned by one lock on `prefix_node` (None: no lock held); slots
    `[num_prefix, num_computed_tokens)` are the request's own. `num_cached_tokens` is the hit of
    its first admission (0 without a cache), kept across preemptions.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: never None
    sample_seed: int  # resolved: params.seed (+ sample index) or drawn by the engine
    stop_token_ids: frozenset[int]  # eos ids (unless ignore_eos) and params.stop_token_ids
    arrival_time: float = 0.0
    output_token_ids: list[int] = field(default_factory=list)
    # Per generated token: (logprob of the sampled token, [(token id, logprob)] top alternatives).
    output_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    row: int = -1
    num_computed_tokens: int = 0
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    prefix_node: RadixNode | None = None
    num_prefix: int = 0
    num_cached_tokens: int = 0
    num_tokens: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        self.num_tokens = len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        """Tokens `[start, end)` of prompt + output, without copying the whole sequence."""
        n_prompt = len(self.prompt_token_ids)
        if end <= n_prompt:
            return self.prompt_token_ids[start:end]
        if start >= n_prompt:
            return self.output_token_ids[start - n_prompt : end - n_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n_prompt]
