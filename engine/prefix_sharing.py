"""The scheduler's side of the prefix cache: which request rows borrow which cached slots.

`PrefixSharing` owns the scheduler's view of the `PrefixCache` (matching, locking, giving tokens
to the tree) and the ReqToToken entries it rewrites between steps, which must reach the device
with the next batch. With a cache:
- a slot is owned by the tree or by one running request, never both:
  `allocator.num_used == cache.num_cached_slots + sum(r.num_computed_tokens - r.num_prefix)`
  over running requests;
- each running request holds exactly one lock, on `r.prefix_node` (the root when it borrows
  nothing; locking the root is a no-op); slots `[0, num_prefix)` of its row are the tree's;
- requests give their computed tokens to the tree when they finish, are aborted or preempted
  (`release`), and their prompt once its prefill completes (`share_prefills`, next step), so
  that requests running alongside share it;
- every host-side table entry it rewrites is queued until the next batch takes it
  (`flush_table_writes`); entries of a row are dropped when the row is freed (`forget_row`).

It never allocates slots, never evicts, never picks which requests run, and never allocates or
frees table rows; the scheduler does all of that. Without a cache it matches nothing and queues
nothing.
"""

from __future__ import annotations

import numpy as np

from raylight.engine.batch import Batch
from raylight.engine.kv_pool import ReqToTokenTable
from raylight.engine.prefix_cache import PrefixCache, RadixNode
from raylight.engine.request import Request, RequestStatus

_NO_SLOTS = np.zeros(0, dtype=np.int64)


class PrefixSharing:
    def __init__(self, cache: PrefixCache | None, table: ReqToTokenTable) -> None:
        self.cache = cache
        self.table = table
        # ReqToToken entries written this step besides the new tokens': (row, positions, slots).
        self._table_writes: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._prefilled: list[Request] = []  # finished their prompt last step: share it

    def lock_prefix(self, req: Request) -> tuple[np.ndarray, RadixNode | None, int]:
        """The longest cached prefix of `req`, locked at once so that eviction cannot take it;
        capped so that at least one token is computed (its logits are needed). Returns its slots,
        the locked node (None without a cache) and how many of its slots were evictable."""
        cache = self.cache
        if cache is None:
            return _NO_SLOTS, None, 0
        m = cache.match_prefix(req.token_ids_slice(0, req.num_tokens), max_len=req.num_tokens - 1)
        before = cache.num_evictable_slots
        cache.lock(m.node)
        return m.slots, m.node, before - cache.num_evictable_slots

    def unlock(self, node: RadixNode | None) -> None:
        """Undoes `lock_prefix` for a request that was not admitted after all: the prefix it
        matched in vain may be evicted again."""
        if self.cache is not None and node is not None:
            self.cache.unlock(node)

    def start(self, req: Request, hit: np.ndarray, node: RadixNode | None) -> None:
        """Points `req`'s fresh row at its locked cached prefix `hit`."""
        k = len(hit)
        req.num_computed_tokens = k
        req.prefix_node = node
        req.num_prefix = k
        if req.num_preemptions == 0:
            req.num_cached_tokens = k
        if k:
            self.table.table[req.row, :k] = hit
            self._table_writes.append((req.row, np.arange(k, dtype=np.int64), hit))

    def on_prefilled(self, req: Request) -> None:
        """`req` just finished its prompt and keeps running: share the prompt next step."""
        if self.cache is not None:
            self._prefilled.append(req)

    def share_prefills(self) -> None:
        """Gives the tree the prompt of each request that finished its prefill last step and is
        still running, so that requests admitted later (and samples of the same prompt running
        alongside, whose duplicate slots are freed) share it. Rewritten table entries go to the
        device with this step's batch."""
        if not self._prefilled:
            return
        cache = self.cache
        assert cache is not None
        for req in self._prefilled:
            c = req.num_computed_tokens
            if req.status is not RequestStatus.RUNNING or c <= req.num_prefix:
                continue
            row = self.table.table[req.row]
            own = row[:c].astype(np.int64)
            assert req.prefix_node is not None
            m = cache.insert_running(req.token_ids_slice(0, c), own, req.prefix_node)
            changed = np.flatnonzero(m.slots != own)
            if len(changed):
                row[changed] = m.slots[changed]
                self._table_writes.append((req.row, changed, m.slots[changed]))
            req.prefix_node = m.node
            req.num_prefix = c
        self._prefilled.clear()

    def forget_row(self, row: int) -> None:
        """`row` is being freed: drop its queued entries, which could otherwise reach the device
        with a later batch alongside the entries of the request that reuses the row. Queued
        entries are thus always for rows of running requests."""
        if self._table_writes:
            self._table_writes = [w for w in self._table_writes if w[0] != row]

    def flush_table_writes(self, batch: Batch) -> None:
        """Moves this step's extra table entries (if any) into `batch`."""
        writes = self._table_writes
        if not writes:
            return
        batch.table_rows = np.repeat(
            np.array([w[0] for w in writes], dtype=np.int64), [len(w[1]) for w in writes]
        )
        batch.table_positions = np.concatenate([w[1] for w in writes])
        batch.table_slots = np.concatenate([w[2] for w in writes])
        self._table_writes = []

    def release(self, req: Request, slots: np.ndarray) -> None:
        """Gives the tree `req`'s computed tokens at `slots` (its row `[0, num_computed_tokens)`;
        the tree frees those it already holds elsewhere), then drops its lock. Borrowed slots are
        never freed here: that would double free the tree's slots. The row itself stays with the
        scheduler."""
        cache = self.cache
        assert cache is not None
        c = req.num_computed_tokens
        if c:
            cache.insert(req.token_ids_slice(0, c), slots)
        if req.prefix_node is not None:
            cache.unlock(req.prefix_node)
        req.prefix_node = None
        req.num_prefix = 0
