"""Continuous batching with chunked prefill over the token-level KV pool.

`schedule()` picks this step's work and allocates its KV slots; `update()` applies the sampled
tokens. Only `update`, `add` and `abort` change request state, and never in the middle of a step.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from raylight.engine.admission import AdmissionPolicy
from raylight.engine.batch import Batch, RequestDelta, TokenLogprobs
from raylight.engine.config import SchedulerConfig
from raylight.engine.kv_pool import ReqToTokenTable, SlotAllocator
from raylight.engine.request import FinishReason, Request, RequestStatus


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, allocator: SlotAllocator, policy: AdmissionPolicy
    ) -> None:
        self.config = config
        self.allocator = allocator
        self.policy = policy
        self.table = ReqToTokenTable(config.max_num_seqs, config.max_model_len)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def abort(self, req: Request) -> None:
        """Ends `req` now (between steps only) and frees what it holds."""
        if req.is_finished:
            return
        if req.status is RequestStatus.RUNNING:
            self._release(req)
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = FinishReason.ABORT

    # ---- schedule -------------------------------------------------------------------------

    def schedule(self) -> Batch | None:
        budget = self.config.max_num_batched_tokens
        plan: list[tuple[Request, int]] = []
        for req in self.running:
            n = req.num_tokens - req.num_computed_tokens
            if n > budget:
                n = budget
            if n > 0:
                plan.append((req, n))
                budget -= n
        need = self.config.max_num_batched_tokens - budget
        preempted = False
        while need > self.allocator.num_free:
            victim = self.running[-1]
            victim_need = next((n for r, n in plan if r is victim), 0)
            plan = [(r, n) for r, n in plan if r is not victim]
            need -= victim_need
            self._preempt(victim)
            preempted = True
        if not preempted and self.waiting:
            need = self._admit(plan, budget, need)
        if not plan:
            return None
        return self._build_batch(plan, need)

    def _admit(self, plan: list[tuple[Request, int]], budget: int, need: int) -> int:
        self.policy.begin_step(self.running, self.allocator.num_free)
        max_seqs = self.config.max_num_seqs
        while self.waiting and budget > 0 and len(self.running) < max_seqs:
            req = self.waiting[0]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if need + n > self.allocator.num_free or not self.policy.admit(req):
                break
            self.waiting.popleft()
            req.row = self.table.alloc_row()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            plan.append((req, n))
            need += n
            budget -= n
        return need

    def _build_batch(self, plan: list[tuple[Request, int]], need: int) -> Batch:
        requests = [r for r, _ in plan]
        input_ids: list[int] = []
        starts_l, rows_l, totals_l = [], [], []
        for r, n in plan:
            c = r.num_computed_tokens
            if n == 1 and r.output_token_ids and c == r.num_tokens - 1:
                input_ids.append(r.output_token_ids[-1])  # the common decode case
            else:
                input_ids.extend(r.token_ids_slice(c, c + n))
            starts_l.append(c)
            rows_l.append(r.row)
            totals_l.append(r.num_tokens)
        num_new = np.array([n for _, n in plan], dtype=np.int64)
        starts = np.array(starts_l, dtype=np.int64)
        rows = np.array(rows_l, dtype=np.int64)
        cu = np.zeros(len(plan) + 1, dtype=np.int64)
        np.cumsum(num_new, out=cu[1:])
        total = int(cu[-1])
        # positions: for each request, start .. start + n - 1, concatenated.
        positions = np.arange(total, dtype=np.int64) + np.repeat(starts - cu[:-1], num_new)
        slots = self.allocator.alloc(need)
        token_rows = np.repeat(rows, num_new)
        self.table.table[token_rows, positions] = slots
        seq_lens = starts + num_new
        sample_indices = np.flatnonzero(seq_lens == np.array(totals_l))
        return Batch(
            requests=requests,
            input_ids=np.asarray(input_ids, dtype=np.int64),
            positions=positions,
            out_slots=slots,
            token_rows=token_rows,
            cu_seqlens_q=cu,
            seq_lens_kv=seq_lens,
            req_rows=rows,
            num_new=num_new,
            sample_indices=sample_indices,
            logits_indices=cu[1:][sample_indices] - 1,
            max_q_len=int(num_new.max()),
            max_kv_len=int(seq_lens.max()),
        )

    # ---- update ---------------------------------------------------------------------------

    def update(
        self,
        batch: Batch,
        token_ids: list[int],
        logprobs: list[TokenLogprobs | None] | None = None,
    ) -> list[RequestDelta]:
        """Applies one step: `token_ids[i]` (and `logprobs[i]`) belong to
        `batch.requests[batch.sample_indices[i]]`."""
        requests = batch.requests
        for req, n in zip(requests, batch.num_new.tolist()):
            req.num_computed_tokens += n
        if len(batch.sample_indices) != len(requests):  # some requests are mid-prefill
            requests = [requests[i] for i in batch.sample_indices.tolist()]
        deltas: list[RequestDelta] = []
        max_len = self.config.max_model_len
        any_finished = False
        for i, req in enumerate(requests):
            token = token_ids[i]
            out = req.output_token_ids
            out.append(token)
            req.num_tokens += 1  # kept equal to len(prompt) + len(output)
            lp = None if logprobs is None else logprobs[i]
            if lp is not None:
                req.output_logprobs.append(lp)
            reason = None
            if token in req.stop_token_ids and len(out) > req.params.min_tokens:
                reason = FinishReason.STOP
            elif len(out) >= req.max_tokens or req.num_tokens >= max_len:
                reason = FinishReason.LENGTH
            if reason is not None:
                self._finish(req, reason)
                any_finished = True
                deltas.append(RequestDelta(req.request_id, [token], _one(lp), reason.value))
            else:
                deltas.append(RequestDelta(req.request_id, [token], _one(lp), None))
        if any_finished:
            self.running = [r for r in self.running if not r.is_finished]
        return deltas

    # ---- freeing --------------------------------------------------------------------------

    def _finish(self, req: Request, reason: FinishReason) -> None:
        self._release(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        self.policy.on_finish(req)

    def _preempt(self, req: Request) -> None:
        """Frees everything `req` holds; it recomputes its K/V when admitted again."""
        self._release(req)
        self.running.remove(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _release(self, req: Request) -> None:
        self.allocator.free(self.table.table[req.row, : req.num_computed_tokens].astype(np.int64))
        self.table.free_row(req.row)
        req.row = -1
        req.num_computed_tokens = 0


def _one(logprobs: TokenLogprobs | None) -> list[TokenLogprobs] | None:
    return None if logprobs is None else [logprobs]
