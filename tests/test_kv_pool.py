"""KV pool invariants under random alloc/free sequences (property-based)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylight.engine.kv_pool import ReqToTokenTable, SlotAllocator


@settings(max_examples=200, deadline=None)
@given(
    num_slots=st.integers(2, 64),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 1000)), max_size=60),
)
def test_random_alloc_free_keeps_invariants(num_slots: int, ops: list) -> None:
    alloc = SlotAllocator(num_slots)
    holders: list[np.ndarray] = []
    for is_alloc, n, pick in ops:
        if is_alloc:
            if n > alloc.num_free:
                with pytest.raises(MemoryError):
                    alloc.alloc(n)
                continue
            holders.append(alloc.alloc(n))
        elif holders:
            # Free a whole holder, or (an "abort" mid-way) just part of one and keep the rest.
            h = holders.pop(pick % len(holders))
            cut = pick % (len(h) + 1)
            alloc.free(h[:cut])
            if cut < len(h):
                holders.append(h[cut:])
        owned = np.concatenate(holders) if holders else np.zeros(0, dtype=np.int64)
        assert len(np.unique(owned)) == len(owned), "a slot is owned twice"
        assert 0 not in owned, "slot 0 was handed out"
        assert np.all((owned >= 1) & (owned < num_slots))
        assert alloc.num_free + len(owned) == alloc.capacity
        assert sorted(alloc.owned().tolist()) == sorted(owned.tolist())
    for h in holders:
        alloc.free(h)
    assert alloc.num_free == alloc.capacity
    assert len(alloc.owned()) == 0


def test_double_free_is_refused() -> None:
    alloc = SlotAllocator(8)
    s = alloc.alloc(3)
    alloc.free(s)
    with pytest.raises(RuntimeError):
        alloc.free(s)
    with pytest.raises(RuntimeError):
        alloc.free(np.array([0]))  # the dummy slot is never owned


def test_pool_needs_a_real_slot() -> None:
    with pytest.raises(ValueError):
        SlotAllocator(1)


def test_req_to_token_rows_skip_row_zero() -> None:
    table = ReqToTokenTable(max_running=3, max_model_len=5)
    rows = [table.alloc_row() for _ in range(3)]
    assert sorted(rows) == [1, 2, 3]
    assert table.num_free_rows == 0
    table.free_row(rows[1])
    assert table.alloc_row() == rows[1]
