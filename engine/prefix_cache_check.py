"""`check_invariants` for `PrefixCache`: an O(tree) audit for tests and debugging."""

from __future__ import annotations

import numpy as np

from raylight.engine.prefix_cache import PrefixCache, RadixNode

Content = dict[tuple[int, ...], tuple[int, int]]


def check_invariants(cache: PrefixCache) -> None:
    """Raises AssertionError unless every invariant in `prefix_cache`'s docstring holds."""
    nodes = cache.nodes()
    assert cache.root.ref == 0 and cache.root.locks == 0 and len(cache.root.key) == 0
    assert cache.num_nodes == len(nodes)
    evictable = 0
    for node in nodes:
        _check_node(cache, node)
        if node.ref == 0:
            evictable += len(node.slots)
    assert cache.num_evictable_slots == evictable, (cache.num_evictable_slots, evictable)
    slots = np.concatenate([n.slots for n in nodes]) if nodes else np.zeros(0, np.int64)
    assert len(slots) == cache.num_cached_slots, (len(slots), cache.num_cached_slots)
    assert len(np.unique(slots)) == len(slots), "a slot is owned twice by the tree"
    assert (slots > 0).all(), "the dummy slot 0 is in the tree"
    assert np.isin(slots, cache.allocator.owned()).all(), "the tree owns a free slot"
    stamps = {id(node): stamp for stamp, node in cache.heap_entries() if stamp == node.last_access}
    for node in nodes:
        if node.ref == 0 and node.is_leaf:
            assert id(node) in stamps, "an evictable leaf is missing from the eviction heap"


def _check_node(cache: PrefixCache, node: RadixNode) -> None:
    parent = node.parent
    assert parent is not None, "a node in the tree has no parent"
    assert len(node.key) > 0, "empty non-root node"
    assert len(node.key) == len(node.slots)
    assert node.key.dtype == np.int64 and node.slots.dtype == np.int64
    assert parent.children.get(int(node.key[0])) is node, "children not keyed by first token"
    assert node.locks >= 0 and node.ref >= 0
    assert node.ref == node.locks + sum(c.ref for c in node.children.values()), "bad ref count"
    if parent is not cache.root:
        assert parent.last_access >= node.last_access, "a parent is older than its child"


def cached_prefixes(cache: PrefixCache) -> Content:
    """Every cached token prefix -> (the slot of its last token, ref of the node holding it).
    Token-level, so it does not depend on where edges were split (brute-force comparisons)."""
    out: Content = {}
    stack: list[tuple[RadixNode, tuple[int, ...]]] = [(cache.root, ())]
    while stack:
        node, prefix = stack.pop()
        for child in node.children.values():
            p = prefix
            for tok, slot in zip(child.key.tolist(), child.slots.tolist()):
                p = (*p, tok)
                out[p] = (slot, child.ref)
            stack.append((child, p))
    return out
