"""One generation request as the engine sees it: token ids in, token ids out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raylight.engine.prefix_cache import RadixNode
from raylight.engine.sampling_params import SamplingParams

PENDING = -1  # an output token sampled by a batch still on the device


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
    """A request inside the engine. Only the scheduler (`schedule`, `update`, `abort`) mutates it.

    Invariants: `num_computed_tokens` tokens of `prompt + output` have their K/V in the pool (or
    written by a batch already scheduled), at the slots in row `row` of the ReqToToken table;
    `num_computed_tokens <= num_tokens`; `num_tokens == len(prompt_token_ids) +
    len(output_token_ids)` (kept as a field because the scheduler reads it for every running
    request every step).

    Pending tokens: `schedule` appends one `PENDING` placeholder per request that samples in the
    batch and `update` overwrites the oldest one with the sampled id, so the last
    `num_pending` output tokens are not known yet (at most 2: one batch running on the device,
    one scheduled ahead of it). `pending_row` is the newest placeholder's row among the sampled
    ids of the batch that produces it: the next batch reads its input token from there on the
    device. Outside a step with overlap there is at most one pending token, else none.

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
    num_pending: int = 0
    pending_row: int = -1
    num_tokens: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        self.num_tokens = len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def at_length_limit(self, max_model_len: int) -> bool:
        """Whether the output (pending tokens counted) has reached max_tokens or the context."""
        return len(self.output_token_ids) >= self.max_tokens or self.num_tokens >= max_model_len

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        """Tokens `[start, end)` of prompt + output, without copying the whole sequence."""
        n_prompt = len(self.prompt_token_ids)
        if end <= n_prompt:
            return self.prompt_token_ids[start:end]
        if start >= n_prompt:
            return self.output_token_ids[start - n_prompt : end - n_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n_prompt]
