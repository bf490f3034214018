"""A nopad (ragged) batch: what one engine step computes, built by the scheduler on the host."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raylight.engine.request import Request

_NONE = np.zeros(0, dtype=np.int64)
_NONE.flags.writeable = False  # shared by every batch without extra table entries


def _no_entries() -> np.ndarray:
    return _NONE


@dataclass(slots=True)
class Batch:
    """B requests, T new tokens, concatenated request by request with no padding; requests
    with one new token (decodes) come first.

    `num_new[b]` tokens of request b start at position `start_pos[b]`; their K/V go to
    `out_slots[cu_seqlens_q[b]:cu_seqlens_q[b + 1]]`, already written into the host
    ReqToToken table at row `req_rows[b]`. Requests whose new tokens reach their sequence's end
    sample one token: `sample_indices` are their rows in the batch (in batch order) and
    `logits_indices` the token rows whose hidden states give the logits.

    `table_rows/table_positions/table_slots` are E further ReqToToken entries the scheduler
    wrote into its host table this step without computing them: cached prefixes reused at
    admission and entries the prefix cache rewrote. Every rank's device table must apply them
    before attention. They never share a (row, position) with the new tokens' entries.
    """

    requests: list[Request]
    input_ids: np.ndarray  # int64 [T]
    positions: np.ndarray  # int64 [T]
    out_slots: np.ndarray  # int64 [T]
    token_rows: np.ndarray  # int64 [T]: the ReqToToken row of each token's request
    cu_seqlens_q: np.ndarray  # int64 [B + 1]
    seq_lens_kv: np.ndarray  # int64 [B]: tokens with K/V after this step
    req_rows: np.ndarray  # int64 [B]
    num_new: np.ndarray  # int64 [B]
    sample_indices: np.ndarray  # int64 [S]: which of the B requests sample
    logits_indices: np.ndarray  # int64 [S]: the token row each sampling request reads logits at
    max_q_len: int
    max_kv_len: int
    table_rows: np.ndarray = field(default_factory=_no_entries)  # int64 [E]
    table_positions: np.ndarray = field(default_factory=_no_entries)  # int64 [E]
    table_slots: np.ndarray = field(default_factory=_no_entries)  # int64 [E]
    # P decode tokens whose input is the sampled id of the batch still running (scheduled
    # ahead, overlap): input_ids[pending_lanes[p]] = that batch's sampled ids[pending_rows[p]],
    # on the device. input_ids holds 0 there.
    pending_lanes: np.ndarray = field(default_factory=_no_entries)  # int64 [P]
    pending_rows: np.ndarray = field(default_factory=_no_entries)  # int64 [P]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def decode_only(self) -> bool:
        return self.max_q_len == 1

    @property
    def num_leading_decodes(self) -> int:
        """How many requests at the batch's start have exactly one new token (the scheduler
        puts them first; from cu_seqlens_q, which every tensor-parallel rank receives)."""
        longer = np.flatnonzero(np.diff(self.cu_seqlens_q) != 1)
        return int(longer[0]) if longer.shape[0] else int(self.req_rows.shape[0])

    @property
    def sampling_requests(self) -> list[Request]:
        reqs = self.requests
        return [reqs[i] for i in self.sample_indices.tolist()]


# (logprob of the sampled token, [(token id, logprob)] best alternatives, best first)
TokenLogprobs = tuple[float, list[tuple[int, float]]]


@dataclass(slots=True)
class RequestDelta:
    """What one step produced for one request: new token ids, and why it ended if it did."""

    request_id: str
    new_token_ids: list[int]
    # Per new token: (logprob of the token, [(token id, logprob)] top alternatives); None when
    # the request did not ask for logprobs.
    new_logprobs: list[TokenLogprobs] | None
    finish_reason: str | None
    # Prompt tokens whose K/V came from the prefix cache at the request's first admission; set
    # on its first delta only (the one with its first generated token), None on the others.
    num_cached_tokens: int | None = None
