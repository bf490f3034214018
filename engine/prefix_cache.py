"""Token-level prefix cache: a radix tree over token ids whose nodes own KV slots.

A hit may end at any token: matching splits an edge there. Slots come from (and go back to) a
`SlotAllocator`; one slot holds one token, so a node owns `len(node.key)` slots.

Ownership: a slot is owned either by the tree (it lies in some node) or by exactly one request,
never both. Requests borrow tree slots by locking the node that ends their matched path; locked
nodes (and so their ancestors) are never evicted. `insert` hands a request's slots to the tree and
frees those that duplicate tokens the tree already holds.

Tree invariants (checked by `check_invariants`):
- every non-root node has a non-empty key, `len(slots) == len(key)`, and is its parent's child
  under `key[0]`;
- `ref(n) == locks(n) + sum(ref(c) for c in children(n))`, where `locks(n)` counts the live
  `lock(n)` calls not yet undone; so `ref(n) == 0` implies the whole subtree is unlocked;
- `last_access(parent) >= last_access(child)`: every touch covers the path from the root, so LRU
  over leaves evicts in non-decreasing access order;
- the tree's slots are distinct, allocated in the allocator, and there are `num_cached_slots` of
  them; `num_evictable_slots` is the number held by nodes with `ref == 0`;
- every unlocked leaf has an entry with its current `last_access` in the eviction heap (stale
  entries are skipped when popped).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from raylight.engine.kv_pool import SlotAllocator

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(slots=True, eq=False)
class RadixNode:
    """One edge of the tree with the node it leads to: `key` tokens stored at `slots`."""

    key: np.ndarray  # int64 [n] token ids; empty only for the root
    slots: np.ndarray  # int64 [n] KV slot of each token
    parent: RadixNode | None  # None for the root and for evicted nodes
    children: dict[int, RadixNode] = field(default_factory=dict)  # keyed by child.key[0]
    ref: int = 0  # live locks on this node or any descendant
    locks: int = 0  # live locks on this very node
    last_access: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children


class PrefixMatch(NamedTuple):
    """`slots[i]` holds the K/V of token i of the query; `node` ends the matched path (the
    root when nothing matched). Lock `node` before anything may evict."""

    slots: np.ndarray  # int64 [num_matched]
    node: RadixNode


def block_aligned(num_tokens: int, block_size: int = 16) -> int:
    """The hit a block-level cache (vLLM-style, `block_size` tokens per block) would give where
    this cache hits `num_tokens` (a `match_prefix` length, after the caller's cap): only whole
    blocks can hit, so round down. Exact when both caches held the same tokens; eviction
    differences between the two are ignored. For a simulator's token- vs block-level hit rate."""
    return num_tokens - num_tokens % block_size


def _common_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two int arrays of equal length."""
    eq = a == b
    return len(a) if eq.all() else int(eq.argmin())


def _as_tokens(token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(token_ids, dtype=np.int64)


class PrefixCache:
    """Radix tree of cached token prefixes; see the module docstring for the invariants."""

    def __init__(self, allocator: SlotAllocator) -> None:
        self.allocator = allocator
        self.root = RadixNode(key=_EMPTY, slots=_EMPTY, parent=None)
        self.num_cached_slots = 0
        self.num_evictable_slots = 0
        self.num_nodes = 0  # excluding the root
        self._clock = 0
        self._seq = 0  # breaks ties in the heap (RadixNode is not ordered)
        self._heap: list[tuple[int, int, RadixNode]] = []

    def match_prefix(
        self, token_ids: Sequence[int] | np.ndarray, max_len: int | None = None
    ) -> PrefixMatch:
        """Longest cached prefix of `token_ids[:max_len]`. Splits the edge where the hit ends
        mid-node, so that `node` ends exactly at the hit; touches the matched path (LRU)."""
        tokens = _as_tokens(token_ids)
        if max_len is not None:
            tokens = tokens[: max(max_len, 0)]
        node, chunks = self._descend(tokens)
        self._touch(node)
        slots = np.concatenate(chunks) if chunks else _EMPTY
        return PrefixMatch(slots, node)

    def _descend(self, tokens: np.ndarray) -> tuple[RadixNode, list[np.ndarray]]:
        """Walks the longest cached prefix of `tokens`, splitting the node where it ends mid-edge.
        Returns the node that ends the prefix and the slot arrays of the path root..node."""
        node, pos, n = self.root, 0, len(tokens)
        chunks: list[np.ndarray] = []
        while pos < n:
            child = node.children.get(int(tokens[pos]))
            if child is None:
                break
            m = min(len(child.key), n - pos)
            c = _common_len(child.key[:m], tokens[pos : pos + m])
            if c < len(child.key):
                child = self._split(child, c)
            chunks.append(child.slots)
            node, pos = child, pos + c
        return node, chunks

    def _split(self, node: RadixNode, at: int) -> RadixNode:
        """Cuts `node`'s edge after `at` tokens (0 < at < len); returns the new upper node.
        `node` keeps its lower part, its children and its locks (lock handles stay valid)."""
        parent = node.parent
        assert parent is not None and 0 < at < len(node.key)
        upper = RadixNode(
            key=node.key[:at].copy(),
            slots=node.slots[:at].copy(),
            parent=parent,
            ref=node.ref,
            last_access=node.last_access,
        )
        parent.children[int(node.key[0])] = upper
        node.key, node.slots = node.key[at:].copy(), node.slots[at:].copy()
        upper.children[int(node.key[0])] = node
        node.parent = upper
        self.num_nodes += 1
        return upper

    def _touch(self, node: RadixNode) -> None:
        """Marks the path root..node as used now."""
        self._clock += 1
        end = node
        while node is not self.root:
            assert node.parent is not None
            node.last_access = self._clock
            node = node.parent
        self._maybe_push(end)

    def lock(self, node: RadixNode) -> None:
        """Pins the path root..node (a running request reads those slots). The root is a no-op."""
        if node is self.root:
            return
        node.locks += 1
        while node is not self.root:
            assert node.parent is not None, "locking an evicted node"
            if node.ref == 0:
                self.num_evictable_slots -= len(node.slots)
            node.ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        """Undoes one `lock(node)`; what becomes unreferenced is evictable again."""
        if node is self.root:
            return
        if node.locks <= 0:
            raise RuntimeError("unlocking a prefix-cache node that is not locked")
        node.locks -= 1
        end = node
        while node is not self.root:
            assert node.parent is not None
            node.ref -= 1
            if node.ref == 0:
                self.num_evictable_slots += len(node.slots)
            node = node.parent
        self._maybe_push(end)

    def insert(self, token_ids: Sequence[int] | np.ndarray, slots: np.ndarray) -> int:
        """Gives the tree the K/V of `token_ids` held at `slots` (`slots[i]` holds token i).

        The tree takes ownership of every slot passed: slots of tokens it did not hold become new
        nodes; slots of tokens it already holds are freed to the allocator, except those equal
        to the tree's own slot for that token (the caller's locked, borrowed prefix). Returns the
        number of leading tokens the tree already held. Locks are untouched: unlock afterwards.
        """
        tokens = _as_tokens(token_ids)
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) != len(tokens):
            raise ValueError(f"{len(tokens)} tokens but {len(slots)} slots")
        node, chunks = self._descend(tokens)
        cached = np.concatenate(chunks) if chunks else _EMPTY
        pos = len(cached)
        self.allocator.free(slots[:pos][cached != slots[:pos]])
        if pos < len(tokens):
            node = self._add_leaf(node, tokens[pos:].copy(), slots[pos:].copy())
        self._touch(node)
        return pos

    def _add_leaf(self, parent: RadixNode, key: np.ndarray, slots: np.ndarray) -> RadixNode:
        leaf = RadixNode(key=key, slots=slots, parent=parent)
        parent.children[int(key[0])] = leaf
        self.num_nodes += 1
        self.num_cached_slots += len(slots)
        self.num_evictable_slots += len(slots)
        return leaf

    def insert_running(
        self, token_ids: Sequence[int] | np.ndarray, slots: np.ndarray, locked: RadixNode
    ) -> PrefixMatch:
        """`insert` for a request that keeps running (e.g. after its prefill): moves its lock
        from `locked` to the end of the inserted path and returns the tree's slots for
        `token_ids`, which the caller must write over its own (its duplicates were freed)."""
        self.insert(token_ids, slots)
        match = self.match_prefix(token_ids)
        assert len(match.slots) == len(token_ids)
        self.lock(match.node)
        self.unlock(locked)
        return match

    def evict(self, num_slots: int, partial: bool = False) -> int:
        """Frees unlocked leaves, least recently used first (a parent left childless and unlocked
        becomes a candidate), until `num_slots` slots are freed or nothing is evictable. Whole
        nodes go, so it may free more than `num_slots`; with `partial`, the last leaf taken loses
        only the tail it must (its head may still hit: e.g. a request preempted under pressure
        keeps most of its cached prefix). Returns the number freed."""
        freed = 0
        chunks: list[np.ndarray] = []
        while freed < num_slots and self._heap:
            stamp, _, node = heapq.heappop(self._heap)
            if not self._is_evictable_leaf(node) or node.last_access != stamp:
                continue  # stale entry
            if partial and len(node.slots) > num_slots - freed:
                self._split(node, len(node.slots) - (num_slots - freed))  # node keeps the tail
            parent = node.parent
            assert parent is not None
            del parent.children[int(node.key[0])]
            node.parent = None
            chunks.append(node.slots)
            freed += len(node.slots)
            self.num_nodes -= 1
            self._maybe_push(parent)
        if chunks:
            self.allocator.free(np.concatenate(chunks))
        self.num_cached_slots -= freed
        self.num_evictable_slots -= freed
        return freed

    def _is_evictable_leaf(self, node: RadixNode) -> bool:
        return node.parent is not None and node.ref == 0 and not node.children

    def _maybe_push(self, node: RadixNode) -> None:
        if not self._is_evictable_leaf(node):
            return
        self._seq += 1
        heapq.heappush(self._heap, (node.last_access, self._seq, node))
        if len(self._heap) > 2 * self.num_nodes + 64:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        """Drops stale entries: O(tree), amortised over the > num_nodes pushes since the last."""
        self._heap = []
        for node in self.nodes():
            if self._is_evictable_leaf(node):
                self._seq += 1
                self._heap.append((node.last_access, self._seq, node))
        heapq.heapify(self._heap)

    def nodes(self) -> list[RadixNode]:
        """All non-root nodes, parents before children."""
        out: list[RadixNode] = []
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def heap_entries(self) -> list[tuple[int, RadixNode]]:
        """(stamp, node) of every heap entry, stale ones included (for invariant checks)."""
        return [(stamp, node) for stamp, _, node in self._heap]
