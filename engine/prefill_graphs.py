"""CUDA graphs for small prefill and mixed steps: the host cost of an eager forward pass, gone.

Why: an eager forward pass of the Llama-3.1-8B shape costs the host about 20-30 ms on the H200
machine (355 module calls, 164 Triton and 128 cuBLAS launches with their Python checks and
argument binding: benchmarks/results/h200-2026-12-02-profile-prefill-*.json), whatever the
token count. The device needs about 21 ms for 1,024 tokens, so below about 1,000 tokens an
eager step is host-bound, and the TTFT of a 1,024-token prompt read 22.5 to 35.7 ms from one
process to the next for the same 21 ms of device work.

One graph per (request bucket, token bucket), all sharing one memory pool and one set of static
inputs. A batch of B requests and T new tokens that is not decode-only replays the smallest
graph with R >= B requests and T' >= T tokens. Its D leading one-token requests (the scheduler
puts them first) and its P = B - D others are laid out as 2R attention requests, so that the
decode kernel takes the first R and the prefill kernel the last R (num_decodes = R; with R = 1
there is no decode lane: a one-request batch that is not decode-only has none):
- decode lanes 0..R-1: lane i < D is request i (q row i); lanes D..R-1 are empty (q_len 0,
  seq_len 0, row 0): the decode kernel writes zeros to their q rows, which belong to the
  prefill requests (or to padding) and which the prefill kernel, launched after, overwrites;
- prefill lanes R..2R-1: requests D..B-1, then empty lanes (q_len 0: cu_seqlens repeats T)
  whose programs exit at once;
- tokens T..T'-1: id 0, position 0, ReqToToken row 0, slot 0. They belong to no request, so
  attention reads nothing of them and computes nothing for them; they write their K/V to the
  dummy slot 0 and their ReqToToken entry to row 0 (both never handed out). Their hidden rows
  are garbage, and every layer is row-wise, so it stays in those rows; the LM head reads rows
  < T only.
Baked into a graph: R, T', max_q_len = T' (the prefill kernel's grid and tiles), the decode
kernel's split count (from max_model_len, as the decode graphs), addresses. Everything that
changes per step lives in the static input buffers. The graph ends at the final norm, copied
into one output buffer shared by all graphs; the LM head runs eagerly.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch
from torch import nn

from raylight.engine.attention.backend import AttentionBackend, AttentionMetadata
from raylight.engine.batch import Batch
from raylight.engine.cuda_graphs import capture_in_order, write_pending, write_table
from raylight.engine.layers.attention import ForwardContext

# Rows of the static token buffer [4, max_tokens] and of the request buffer
# [3, 2 * max_reqs + 1] (2R attention requests: R decode lanes, then R prefill lanes).
_IDS, _POS, _SLOTS, _TOKEN_ROWS = range(4)
_CU, _LENS, _REQ_ROWS = range(3)
MAX_REQUESTS = 16  # mixed steps with more requests (many decodes riding along) run eagerly


def token_buckets(max_tokens: int) -> list[int]:
    """16, 32, 64, 128, 256, then 1.5x and 2x steps (384, 512, 768, 1024, 1536, 2048, ...) up
    to and including max_tokens (>= 1): at most a third of a replay's tokens are padding
    above 256."""
    sizes, s = [], 16
    while s < max_tokens:
        sizes.append(s)
        if s >= 256 and s * 3 // 2 < max_tokens:
            sizes.append(s * 3 // 2)
        s *= 2
    return sorted(set(sizes + [max_tokens]))


def request_buckets(max_reqs: int) -> list[int]:
    """1, 4, 16 up to and including max_reqs (>= 1)."""
    return sorted({s for s in (1, 4, 16) if s < max_reqs} | {max_reqs})


class PrefillGraphs:
    """Owns the captured graphs, their memory pool and their static inputs (one device)."""

    def __init__(
        self,
        model: nn.Module,
        backend: AttentionBackend,
        k_caches: list[torch.Tensor],
        v_caches: list[torch.Tensor],
        req_to_token: torch.Tensor,
        max_tokens: int,
        max_reqs: int,
        hidden_size: int,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.backend = backend
        self.k_caches = k_caches
        self.v_caches = v_caches
        self.req_to_token = req_to_token  # int32 [rows, max_model_len]
        self.max_model_len = req_to_token.shape[1]
        self.token_sizes = token_buckets(max_tokens)
        self.req_sizes = request_buckets(min(max_reqs, MAX_REQUESTS))
        self.max_tokens, self.max_reqs = self.token_sizes[-1], self.req_sizes[-1]
        device = req_to_token.device
        # Even row widths: every row starts 16-byte aligned (host_to_device.py says why).
        t, r = (self.max_tokens + 1) // 2 * 2, 2 * self.max_reqs + 2
        self._host = torch.zeros(4 * t + 3 * r, dtype=torch.int64, pin_memory=True)
        host_np = self._host.numpy()
        self._host_tok = host_np[: 4 * t].reshape(4, t)
        self._host_req = host_np[4 * t :].reshape(3, r)
        self._static = self._host.to(device)
        self._tok = self._static[: 4 * t].view(4, t)
        self._req = self._static[4 * t :].view(3, r)
        self._out = torch.empty((t, hidden_size), dtype=dtype, device=device)
        self._copied = torch.cuda.Event()
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.pool_bytes = 0  # device memory the capture took (measured, for reports)
        self.num_replays = 0

    def capture(self) -> None:
        """Captures every bucket pair, largest first (later captures reuse the pool's free
        blocks). Must run after the KV pool is allocated; writes only slot 0 and row 0: the
        static inputs are still all zeros, which is every bucket's all-padding layout."""
        keys = [(reqs, tokens) for reqs in reversed(self.req_sizes)
                for tokens in reversed(self.token_sizes) if tokens >= reqs]  # fmt: skip
        bodies = [(key, lambda key=key: self._body(*key)) for key in keys]
        assert not self._static.any(), "capture needs the all-padding (zero) static inputs"
        self._graphs, _, self.pool_bytes = capture_in_order(self._static.device, bodies)

    def bucket(self, batch: Batch) -> tuple[int, int] | None:
        """The (requests, tokens) graph that runs `batch`, or None: it runs eagerly."""
        b, t = batch.req_rows.shape[0], batch.num_tokens
        if batch.decode_only or not 0 < b <= self.max_reqs or not 0 < t <= self.max_tokens:
            return None
        if batch.max_kv_len > self.max_model_len:
            return None
        reqs = self.req_sizes[bisect.bisect_left(self.req_sizes, b)]
        tokens = self.token_sizes[bisect.bisect_left(self.token_sizes, t)]
        return (reqs, tokens) if (reqs, tokens) in self._graphs else None

    def can_run(self, batch: Batch) -> bool:
        return self.bucket(batch) is not None

    def run(
        self, batch: Batch, pending: tuple[torch.Tensor | None, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Replays the graph of `batch` (`can_run`); returns the final hidden states [T, hidden]
        of its real tokens (a view of the shared output: valid until the next replay).
        `pending`: (lanes, ids) int64 device tensors: input ids that the step before sampled,
        written over the batch's placeholders on the device."""
        key = self.bucket(batch)
        assert key is not None, "PrefillGraphs.run needs a batch that can_run"
        reqs, tokens = key
        # The host buffer is reused: wait for the previous replay's copy out of it (long done).
        self._copied.synchronize()
        fill_inputs(self._host_tok, self._host_req, batch, reqs, tokens)
        # The whole buffer (contiguous, <= 70 KB): a strided copy would go through pageable memory.
        self._static.copy_(self._host, non_blocking=True)
        self._copied.record()
        write_pending(self._tok[_IDS], pending)
        self._graphs[key].replay()
        self.num_replays += 1
        return self._out[: batch.num_tokens]

    def _body(self, reqs: int, tokens: int) -> None:
        """What a graph runs: `forward_padded` on the static inputs, into the shared output."""
        hidden = forward_padded(self.model, self.backend, self.k_caches, self.v_caches,
                                self.req_to_token, self._tok, self._req, reqs, tokens)  # fmt: skip
        self._out[:tokens].copy_(hidden)


def decode_lanes(reqs: int) -> int:
    """Decode lanes of the graph for `reqs` requests (module doc)."""
    return reqs if reqs > 1 else 0


def fill_inputs(tok: np.ndarray, req: np.ndarray, batch: Batch, reqs: int, tokens: int) -> None:
    """Writes `batch` and its padding, laid out for the (reqs, tokens) graph (module doc), into
    the host buffers tok int64 [4, >= tokens] and req int64 [3, >= 2 * reqs + 1]. (With no
    request at all every entry would be 0: the zeroed buffers the graphs are captured on.)"""
    lanes = decode_lanes(reqs)
    b, t = batch.req_rows.shape[0], batch.num_tokens
    d = batch.num_leading_decodes if lanes else 0
    p = b - d
    tok[:, t:tokens] = 0
    req[:, : lanes + reqs + 1] = 0
    cu = req[_CU]
    cu[: d + 1] = np.arange(d + 1)  # decode lane i: q row i
    cu[d + 1 : lanes + 1] = d  # empty decode lanes
    cu[lanes + p + 1 : lanes + reqs + 1] = t  # empty prefill lanes
    tok[_IDS, :t] = batch.input_ids
    tok[_POS, :t] = batch.positions
    tok[_SLOTS, :t] = batch.out_slots
    tok[_TOKEN_ROWS, :t] = batch.token_rows
    cu[lanes : lanes + p + 1] = batch.cu_seqlens_q[d:]
    for lane, first, count in ((0, 0, d), (lanes, d, p)):
        req[_LENS, lane : lane + count] = batch.seq_lens_kv[first : first + count]
        req[_REQ_ROWS, lane : lane + count] = batch.req_rows[first : first + count]


def forward_padded(
    model: nn.Module,
    backend: AttentionBackend,
    k_caches: list[torch.Tensor],
    v_caches: list[torch.Tensor],
    req_to_token: torch.Tensor,
    tok: torch.Tensor,
    req: torch.Tensor,
    reqs: int,
    tokens: int,
) -> torch.Tensor:
    """The ReqToToken writes of the new tokens, then the model up to its final norm, on the
    first `tokens` lanes of tok int64 [4, >= tokens] and the decode and prefill lanes of
    req int64 [3, >= 2 * reqs + 1] (laid out by `fill_inputs`) -> hidden [tokens, hidden].
    What a prefill graph captures; tests run it eagerly on the CPU (Triton backend: the
    decode lanes' zeros must come before the prefill kernel's rows)."""
    ids, pos, slots, token_rows = (tok[i, :tokens] for i in range(4))
    write_table(req_to_token, token_rows, pos, slots)
    n = decode_lanes(reqs) + reqs  # attention requests
    meta = AttentionMetadata(
        cu_seqlens_q=req[_CU, : n + 1],
        seq_lens_kv=req[_LENS, :n],
        req_rows=req[_REQ_ROWS, :n],
        req_to_token=req_to_token,
        out_slots=slots,
        max_q_len=tokens,
        max_kv_len=req_to_token.shape[1],
        decode_only=False,
        num_decodes=decode_lanes(reqs),
    )
    return model(ids, pos, ForwardContext(meta, backend, k_caches, v_caches))
