"""Continuous batching with chunked prefill over the token-level KV pool.

`schedule()` picks this step's work (admitting, preempting, sharing prefixes), allocates its
KV slots and reserves its results: it advances `num_computed_tokens` and appends a `PENDING`
token to each request that samples. `update()` fills in the sampled tokens and finishes
requests. Requests change only in these and in `add` and `abort`.

Overlap (`schedule(ahead=True)`): the next batch may be scheduled while the last one still runs
on the device, before its `update`. Its decodes then read their input tokens from the running
batch's sampled ids on the device (`Batch.pending_lanes`); a request that turns out to finish
in the running batch has its scheduled-ahead token dropped by `update` (its slot freed). A
scheduled-ahead batch never preempts: if the pool is short it returns None and the caller
updates first, then schedules again.

With a prefix cache, `PrefixSharing` (engine/prefix_sharing.py) states and keeps the ownership
invariants between the tree and the running requests' rows; the scheduler decides when it runs.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from raylight.engine.admission import AdmissionPolicy
from raylight.engine.batch import Batch, RequestDelta, TokenLogprobs
from raylight.engine.config import SchedulerConfig
from raylight.engine.kv_pool import ReqToTokenTable, SlotAllocator
from raylight.engine.prefix_cache import PrefixCache
from raylight.engine.prefix_sharing import PrefixSharing
from raylight.engine.request import PENDING, FinishReason, Request, RequestStatus


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        allocator: SlotAllocator,
        policy: AdmissionPolicy,
        cache: PrefixCache | None = None,
    ) -> None:
        """`cache` (over `allocator`) enables prefix caching; None keeps no tokens after a
        request ends."""
        if cache is not None and cache.allocator is not allocator:
            raise ValueError("the prefix cache must share the scheduler's slot allocator")
        self.config = config
        self.allocator = allocator
        self.policy = policy
        self.cache = cache
        self.table = ReqToTokenTable(config.max_num_seqs, config.max_model_len)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._prefixes = PrefixSharing(cache, self.table)

    @property
    def num_free_slots(self) -> int:
        """Slots this step may still take: free ones plus cached ones no request pins (evicted on
        demand)."""
        if self.cache is None:
            return self.allocator.num_free
        return self.allocator.num_free + self.cache.num_evictable_slots

    @property
    def num_used_slots(self) -> int:
        """Slots unavailable to new work: running requests' own and the cached ones they pin.
        Cached slots nobody pins count as free (0 when idle, cache or not)."""
        return self.allocator.capacity - self.num_free_slots

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

    def schedule(self, ahead: bool = False) -> Batch | None:
        """This step's batch, or None if nothing can run. `ahead`: the previous batch has not
        been updated yet (see the module docstring); None also when that would need a
        preemption."""
        self._prefixes.share_prefills()  # first: freeing duplicates may spare a preemption
        budget = self.config.max_num_batched_tokens
        max_len = self.config.max_model_len
        plan: list[tuple[Request, int]] = []
        for req in self.running:
            if req.num_pending and req.at_length_limit(max_len):
                continue  # its pending token is its last
            n = req.num_tokens - req.num_computed_tokens
            if n > budget:
                n = budget
            if n > 0:
                plan.append((req, n))
                budget -= n
        need = self.config.max_num_batched_tokens - budget
        if ahead and need > self.num_free_slots:
            return None
        preempted = False
        while need > self.allocator.num_free and need > self.num_free_slots:
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
        # One-token requests first (stable): attention runs them as one decode sub-batch.
        plan.sort(key=lambda entry: entry[1] != 1)
        return self._build_batch(plan, need)

    def _admit(self, plan: list[tuple[Request, int]], budget: int, need: int) -> int:
        self.policy.begin_step(self.running, self.num_free_slots)
        max_seqs = self.config.max_num_seqs
        prefixes = self._prefixes
        while self.waiting and budget > 0 and len(self.running) < max_seqs:
            req = self.waiting[0]
            hit, node, pinned = prefixes.lock_prefix(req)
            k = len(hit)
            n = min(req.num_tokens - k, budget)
            # The policy counts what the request takes from the free count over its life: its
            # new tokens plus the `pinned` hit slots that were evictable (hence counted free).
            req.num_computed_tokens = k - pinned
            if need + n > self.num_free_slots or not self.policy.admit(req):
                req.num_computed_tokens = 0
                prefixes.unlock(node)
                break
            self.waiting.popleft()
            req.row = self.table.alloc_row()
            req.status = RequestStatus.RUNNING
            prefixes.start(req, hit, node)
            self.running.append(req)
            plan.append((req, n))
            need += n
            budget -= n
        return need

    def _build_batch(self, plan: list[tuple[Request, int]], need: int) -> Batch:
        requests = [r for r, _ in plan]
        input_ids: list[int] = []
        starts_l, rows_l, totals_l = [], [], []
        pending_lanes: list[int] = []
        pending_rows: list[int] = []
        for r, n in plan:
            c = r.num_computed_tokens
            if n == 1 and r.output_token_ids and c == r.num_tokens - 1:
                token = r.output_token_ids[-1]  # the common decode case
                if token == PENDING:  # sampled by the batch still running: read on the device
                    pending_lanes.append(len(input_ids))
                    pending_rows.append(r.pending_row)
                    token = 0
                input_ids.append(token)
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
        if need > self.allocator.num_free:
            # Only with a cache: admission and preemption kept need <= num_free_slots.
            assert self.cache is not None
            self.cache.evict(need - self.allocator.num_free, partial=True)
        slots = self.allocator.alloc(need)
        token_rows = np.repeat(rows, num_new)
        self.table.table[token_rows, positions] = slots
        seq_lens = starts + num_new
        sample_indices = np.flatnonzero(seq_lens == np.array(totals_l))
        batch = Batch(
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
        if pending_lanes:
            batch.pending_lanes = np.array(pending_lanes, dtype=np.int64)
            batch.pending_rows = np.array(pending_rows, dtype=np.int64)
        self._prefixes.flush_table_writes(batch)
        self._reserve(plan, sample_indices.tolist())
        return batch

    def _reserve(self, plan: list[tuple[Request, int]], sampling: list[int]) -> None:
        """The batch's effect known before it runs: its K/V count as computed, and each request
        that samples gets a PENDING token (the batch's row `k` of sampled ids)."""
        for r, n in plan:
            r.num_computed_tokens += n
        for k, i in enumerate(sampling):
            r = plan[i][0]
            r.output_token_ids.append(PENDING)
            r.num_tokens += 1
            r.num_pending += 1
            r.pending_row = k

    # ---- update ---------------------------------------------------------------------------

    def update(
        self,
        batch: Batch,
        token_ids: list[int],
        logprobs: list[TokenLogprobs | None] | None = None,
    ) -> list[RequestDelta]:
        """Applies one step: `token_ids[i]` (and `logprobs[i]`) belong to
        `batch.requests[batch.sample_indices[i]]`. Requests that ended since the batch was
        scheduled (finished in the batch before it, or aborted) are skipped."""
        requests = batch.requests
        if len(batch.sample_indices) != len(requests):  # some requests are mid-prefill
            requests = [requests[i] for i in batch.sample_indices.tolist()]
        deltas: list[RequestDelta] = []
        max_len = self.config.max_model_len
        any_finished = False
        for i, req in enumerate(requests):
            if req.status is not RequestStatus.RUNNING:
                continue
            token = token_ids[i]
            out = req.output_token_ids
            j = len(out) - req.num_pending  # the oldest pending token is this batch's
            out[j] = token
            req.num_pending -= 1
            lp = None if logprobs is None else logprobs[i]
            if lp is not None:
                req.output_logprobs.append(lp)
            reason = None
            if token in req.stop_token_ids and j >= req.params.min_tokens:
                reason = FinishReason.STOP
            elif j + 1 >= req.max_tokens or req.num_prompt_tokens + j + 1 >= max_len:
                reason = FinishReason.LENGTH
            cached = None
            if j == 0:  # the first token: its prefill just completed
                cached = req.num_cached_tokens
                if reason is None:
                    self._prefixes.on_prefilled(req)
            if reason is not None:
                self._finish(req, reason)
                any_finished = True
                deltas.append(RequestDelta(req.request_id, [token], _one(lp), reason.value, cached))
            else:
                deltas.append(RequestDelta(req.request_id, [token], _one(lp), None, cached))
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
        """Frees everything `req` holds; it recomputes its K/V when admitted again (with a cache,
        what it computed is cached and usually hits then)."""
        self._release(req)
        self.running.remove(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _release(self, req: Request) -> None:
        """Gives up `req`'s row: its computed tokens go to the cache (see
        `PrefixSharing.release`), or back to the allocator without a cache. Pending tokens are
        dropped first, with the slots of tokens scheduled ahead past the last known one."""
        self._drop_pending(req)
        c = req.num_computed_tokens
        slots = self.table.table[req.row, :c].astype(np.int64)
        if self.cache is None:
            self.allocator.free(slots)
        else:
            self._prefixes.release(req, slots)
        self._prefixes.forget_row(req.row)
        self.table.free_row(req.row)
        req.row = -1
        req.num_computed_tokens = 0

    def _drop_pending(self, req: Request) -> None:
        """Forgets `req`'s pending tokens and keeps K/V only for known tokens but the last (as
        if no batch had been scheduled ahead): a batch still running may write the dropped
        slots, which is harmless, since any later use of them runs after it on the device."""
        if req.num_pending:
            del req.output_token_ids[-req.num_pending :]
            req.num_tokens -= req.num_pending
            req.num_pending = 0
        keep = req.num_tokens - 1
        if req.num_computed_tokens > keep:
            assert keep >= req.num_prefix, "the tree's slots are never scheduled ahead"
            ahead = self.table.table[req.row, keep : req.num_computed_tokens]
            self.allocator.free(ahead.astype(np.int64))
            req.num_computed_tokens = keep


def _one(logprobs: TokenLogprobs | None) -> list[TokenLogprobs] | None:
    return None if logprobs is None else [logprobs]
