"""Radix-tree prefix cache: targeted cases, a brute-force oracle under random use, and speed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.prefix_cache import PrefixCache, RadixNode, block_aligned
from raylight.engine.prefix_cache_check import Content, check_invariants
from raylight.engine.prefix_cache_check import cached_prefixes as content


def fill(cache: PrefixCache, tokens: list[int]) -> np.ndarray:
    """Computes `tokens` as a fresh request would (own slots) and caches them."""
    slots = cache.allocator.alloc(len(tokens))
    cache.insert(tokens, slots)
    return slots


def new_cache(num_slots: int = 1000) -> PrefixCache:
    return PrefixCache(SlotAllocator(num_slots))


@pytest.mark.parametrize("k", range(1, 10))
def test_hit_may_end_at_any_token(k: int) -> None:
    cache = new_cache()
    seq = list(range(1, 11))
    slots = fill(cache, seq)
    match = cache.match_prefix([*seq[:k], 99])
    assert match.slots.tolist() == slots[:k].tolist()
    assert match.node.key.tolist() == seq[:k] and cache.num_nodes == 2
    assert cache.match_prefix(seq).slots.tolist() == slots.tolist()
    assert cache.match_prefix(seq, max_len=k).slots.tolist() == slots[:k].tolist()
    check_invariants(cache)


def test_insert_frees_duplicates_but_not_the_borrowed_prefix() -> None:
    cache = new_cache()
    a = fill(cache, [1, 2, 3, 4])
    # A request that borrowed [1, 2] from the tree and computed [3, 4, 5] itself (a duplicate
    # of [3, 4] made by a concurrent request, and a new token 5).
    hit = cache.match_prefix([1, 2, 3, 4, 5], max_len=2)
    cache.lock(hit.node)
    own = cache.allocator.alloc(3)
    assert cache.insert([1, 2, 3, 4, 5], np.concatenate([hit.slots, own])) == 4
    cache.unlock(hit.node)
    assert cache.allocator.num_used == cache.num_cached_slots == 5
    assert cache.match_prefix([1, 2, 3, 4, 5]).slots.tolist() == [*a.tolist(), own[2]]
    assert cache.insert([1, 2], cache.allocator.alloc(2)) == 2  # wholly cached: both freed
    assert cache.allocator.num_used == 5
    check_invariants(cache)


def test_eviction_is_lru_over_leaves_and_frees_whole_nodes() -> None:
    cache = new_cache()
    for head in (1, 2, 3):
        fill(cache, [head, 10, 11])
    cache.match_prefix([1, 10])  # touches [1, 10] only: splits that leaf into [1, 10] + [11]
    assert cache.evict(1) == 1  # [11] under [1, 10]: it keeps the oldest access time
    assert cache.evict(1) == 3  # [2, 10, 11]
    assert cache.match_prefix([2, 10, 11]).slots.size == 0
    assert cache.evict(1) == 3  # [3, 10, 11]; [1, 10] was used last and stays
    assert cache.match_prefix([1, 10, 11]).slots.size == 2 and cache.num_cached_slots == 2
    check_invariants(cache)


def test_locked_paths_are_never_evicted_and_unlock_makes_them_evictable() -> None:
    cache = new_cache()
    fill(cache, [1, 2, 3, 4])
    fill(cache, [1, 2, 7])
    a = cache.match_prefix([1, 2, 3, 4], max_len=3)  # two requests (n=2) share this prompt
    b = cache.match_prefix([1, 2, 3, 4], max_len=3)
    assert a.node is b.node
    cache.lock(a.node)
    cache.lock(b.node)
    assert cache.num_evictable_slots == 2  # [7] and [4]
    assert cache.evict(100) == 2
    assert cache.num_cached_slots == 3 and cache.match_prefix([1, 2, 3]).slots.size == 3
    cache.unlock(a.node)
    assert cache.evict(100) == 0 and cache.num_evictable_slots == 0
    cache.unlock(b.node)
    assert cache.num_evictable_slots == 3
    with pytest.raises(RuntimeError):
        cache.unlock(b.node)
    check_invariants(cache)


def test_parent_becomes_evictable_after_its_children() -> None:
    cache = new_cache()
    fill(cache, [1, 2, 3, 4])
    fill(cache, [1, 2, 3, 5])
    assert cache.num_nodes == 3  # [1, 2, 3] -> {[4], [5]}
    assert cache.evict(2) == 2 and cache.num_nodes == 1  # the two leaves, not the parent
    check_invariants(cache)
    assert cache.evict(1) == 3 and cache.num_nodes == 0
    assert cache.allocator.num_used == 0
    check_invariants(cache)


def test_insert_running_moves_the_lock_and_returns_the_tree_slots() -> None:
    cache = new_cache()
    first = fill(cache, [1, 2, 3])
    hit = cache.match_prefix([1, 2, 3, 4, 5])
    cache.lock(hit.node)
    own = cache.allocator.alloc(2)
    moved = cache.insert_running([1, 2, 3, 4, 5], np.concatenate([hit.slots, own]), hit.node)
    assert moved.slots.tolist() == [*first.tolist(), *own.tolist()]
    assert cache.num_evictable_slots == 0 and cache.evict(100) == 0
    cache.unlock(moved.node)
    assert cache.evict(100) == 5 and cache.allocator.num_used == 0
    check_invariants(cache)


def test_block_aligned() -> None:
    assert [block_aligned(n) for n in (0, 15, 16, 17, 47, 48)] == [0, 0, 16, 16, 32, 48]
    assert block_aligned(10, block_size=4) == 8


def test_heap_stays_bounded_under_repeated_touches() -> None:
    cache = new_cache()
    fill(cache, [1, 2, 3])
    for _ in range(1000):
        cache.match_prefix([1, 2, 3])
    assert len(cache.heap_entries()) <= 2 * cache.num_nodes + 65
    check_invariants(cache)


@dataclass
class Req:
    tokens: list[int]
    node: RadixNode
    hit: int  # tokens [0, hit) are borrowed tree slots, locked through `node`
    slots: np.ndarray  # slots of all tokens; [hit:] are the request's own


class Oracle:
    """All cached prefixes as tuples, each with its slot, lock count and last access."""

    def __init__(self) -> None:
        self.slot: dict[tuple[int, ...], int] = {}
        self.ref: dict[tuple[int, ...], int] = {}
        self.used: dict[tuple[int, ...], int] = {}
        self.clock = 0

    def hit(self, tokens: list[int]) -> int:
        missing = (k for k in range(len(tokens)) if tuple(tokens[: k + 1]) not in self.slot)
        return next(missing, len(tokens))

    def touch(self, tokens: list[int]) -> None:
        self.clock += 1
        for i in range(1, len(tokens) + 1):
            self.used[tuple(tokens[:i])] = self.clock

    def lock(self, tokens: list[int], delta: int) -> None:
        for i in range(1, len(tokens) + 1):
            self.ref[tuple(tokens[:i])] += delta

    def insert(self, tokens: list[int], slots: list[int]) -> None:
        for i in range(self.hit(tokens), len(tokens)):
            p = tuple(tokens[: i + 1])
            self.slot[p], self.ref[p] = slots[i], 0
        self.touch(tokens)

    def expected(self) -> Content:  # the shape of `cached_prefixes`
        return {p: (s, self.ref[p]) for p, s in self.slot.items()}


class Harness:
    """Drives a cache and the oracle side by side, checking after every step."""

    def __init__(self, num_slots: int) -> None:
        self.cache = PrefixCache(SlotAllocator(num_slots))
        self.oracle = Oracle()
        self.reqs: list[Req] = []

    def check(self) -> None:
        check_invariants(self.cache)
        assert content(self.cache) == self.oracle.expected()
        own = sum(len(r.slots) - r.hit for r in self.reqs)
        assert self.cache.allocator.num_used == self.cache.num_cached_slots + own  # no leaks
        assert self.cache.num_evictable_slots == list(self.oracle.ref.values()).count(0)

    def start(self, tokens: list[int]) -> None:
        cache, oracle = self.cache, self.oracle
        match = cache.match_prefix(tokens, max_len=len(tokens) - 1)
        hit = len(match.slots)
        assert hit == oracle.hit(tokens[: len(tokens) - 1])
        oracle.touch(tokens[:hit])
        cache.lock(match.node)
        oracle.lock(tokens[:hit], +1)
        self.evict(max(0, len(tokens) - hit - cache.allocator.num_free))
        if len(tokens) - hit > cache.allocator.num_free:  # does not fit: give up the lock
            cache.unlock(match.node)
            oracle.lock(tokens[:hit], -1)
            return
        own = cache.allocator.alloc(len(tokens) - hit)
        self.reqs.append(Req(tokens, match.node, hit, np.concatenate([match.slots, own])))

    def finish(self, i: int, cut: int) -> None:
        """Ends request i (finish, abort or preemption): inserts the tokens it computed (none
        when cut == 0) and frees the rest of its own slots."""
        r = self.reqs.pop(i)
        computed = r.hit + (cut - 1) % (len(r.tokens) - r.hit + 1) if cut else r.hit
        self.cache.allocator.free(r.slots[computed:])
        if cut:
            tokens = r.tokens[:computed]
            self.cache.insert(tokens, r.slots[:computed])
            self.oracle.insert(tokens, r.slots[:computed].tolist())
        self.cache.unlock(r.node)
        self.oracle.lock(r.tokens[: r.hit], -1)

    def insert_running(self, i: int) -> None:
        r = self.reqs[i]
        moved = self.cache.insert_running(r.tokens, r.slots, r.node)
        self.oracle.insert(r.tokens, r.slots.tolist())
        self.oracle.touch(r.tokens)
        self.oracle.lock(r.tokens, +1)
        self.oracle.lock(r.tokens[: r.hit], -1)
        self.reqs[i] = Req(r.tokens, moved.node, len(r.tokens), moved.slots)

    def evict(self, n: int) -> None:
        before = content(self.cache)
        freed = self.cache.evict(n)
        gone = before.keys() - content(self.cache).keys()
        assert freed == len(gone)
        assert all(self.oracle.ref[p] == 0 for p in gone), "evicted a locked token"
        slots = np.array([before[p][0] for p in gone], dtype=np.int64)
        assert not np.isin(slots, self.cache.allocator.owned()).any(), "evicted slot not freed"
        last = max((self.oracle.used.pop(p) for p in gone), default=-1)
        for p in gone:
            del self.oracle.slot[p], self.oracle.ref[p]
        left = [self.oracle.used[p] for p, r in self.oracle.ref.items() if r == 0]
        assert freed >= n or not left, "stopped early with evictable slots left"
        assert last <= min(left, default=last), "LRU: evicted something used after a survivor"


op = st.tuples(st.sampled_from("sssmffaie"), st.integers(0, 30), st.integers(0, 30))
ops = st.lists(op, min_size=20, max_size=80)
seqs = st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=10), min_size=2, max_size=6)


@settings(max_examples=200, deadline=None)
@given(num_slots=st.integers(6, 48), seqs=seqs, ops=ops)
def test_matches_brute_force_oracle(num_slots: int, seqs: list[list[int]], ops: list) -> None:
    h = Harness(num_slots)
    for op, a, b in ops:
        tokens = seqs[a % len(seqs)] + seqs[b % len(seqs)]
        if op == "s":
            h.start(tokens)
        elif op == "m":  # a lookup that does not lock (e.g. a prefix-affinity probe)
            hit = len(h.cache.match_prefix(tokens, max_len=b).slots)
            assert hit == h.oracle.hit(tokens[:b])
            h.oracle.touch(tokens[:hit])
        elif op in "fa" and h.reqs:
            h.finish(a % len(h.reqs), b if op == "f" else 0)
        elif op == "i" and h.reqs:
            h.insert_running(a % len(h.reqs))
        elif op == "e":
            h.evict(a)
        h.check()
    for i in reversed(range(len(h.reqs))):
        h.finish(i, 0)
    h.evict(num_slots)
    h.check()
    assert h.cache.allocator.num_used == 0 and h.cache.num_nodes == 0


def test_two_thousand_sequences_of_500_tokens_in_under_two_seconds() -> None:
    rng = np.random.default_rng(0)
    systems = [rng.integers(0, 32000, 200).tolist() for _ in range(20)]
    # Each suffix starts with its own token: the tree holds exactly 20 * 200 + 2000 * 300 tokens.
    seqs = [systems[i % 20] + [-1 - i] + rng.integers(0, 32000, 299).tolist() for i in range(2000)]
    cache = PrefixCache(SlotAllocator(2000 * 500 + 1))
    t0 = time.perf_counter()
    for seq in seqs:
        hit = cache.match_prefix(seq, max_len=len(seq) - 1)
        cache.lock(hit.node)
        own = cache.allocator.alloc(len(seq) - len(hit.slots))
        cache.insert(seq, np.concatenate([hit.slots, own]))
        cache.unlock(hit.node)
    for seq in seqs:
        assert len(cache.match_prefix(seq).slots) == 500
    assert cache.evict(cache.num_cached_slots) == 20 * 200 + 2000 * 300
    elapsed = time.perf_counter() - t0
    assert cache.allocator.num_used == 0
    assert elapsed < 2.0, f"{elapsed:.2f} s"
