"""Host-side bookkeeping of the token-level KV pool: which slot holds which token.

The device buffers (one K and one V tensor per layer, `[num_slots, kv_heads, head_dim]`) belong to
the model runner; this module only hands out slot numbers. A slot holds exactly one token.
Slot 0 is a dummy that padded lanes write to and is never handed out.
"""

from __future__ import annotations

import numpy as np


class SlotAllocator:
    """O(1)-per-token allocation from a free stack of slot numbers.

    Invariants: every slot in 1..num_slots-1 is either on the free stack or owned by exactly one
    holder; slot 0 is never on the stack.
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots < 2:
            raise ValueError(f"a KV pool needs 2+ slots (slot 0 is a dummy), got {num_slots}")
        self.num_slots = num_slots
        # Popped from the end; reversed so that a fresh pool hands out 1, 2, 3, ...
        self._stack = np.arange(num_slots - 1, 0, -1, dtype=np.int64)
        self._top = num_slots - 1
        self._in_use = np.zeros(num_slots, dtype=bool)

    @property
    def capacity(self) -> int:
        return self.num_slots - 1

    @property
    def num_free(self) -> int:
        return self._top

    @property
    def num_used(self) -> int:
        return self.capacity - self._top

    def alloc(self, n: int) -> np.ndarray:
        if n > self._top:
            raise MemoryError(f"KV pool exhausted: asked for {n} slots, {self._top} free")
        self._top -= n
        slots = self._stack[self._top : self._top + n].copy()
        self._in_use[slots] = True
        return slots

    def free(self, slots: np.ndarray) -> None:
        n = len(slots)
        if n == 0:
            return
        if not self._in_use[slots].all() or len(np.unique(slots)) != n:
            raise RuntimeError("freeing KV slots that are not allocated (double free)")
        self._in_use[slots] = False
        self._stack[self._top : self._top + n] = slots
        self._top += n

    def owned(self) -> np.ndarray:
        """The slots currently handed out (for invariant checks)."""
        return np.flatnonzero(self._in_use)


class ReqToTokenTable:
    """int32 [max_running + 1, max_model_len] host table: (request row, position) -> slot.

    Row 0 is never handed out (padded lanes of a CUDA graph point at it). The model runner keeps a
    device copy that it updates from each batch's new (row, position, slot) entries.
    """

    def __init__(self, max_running: int, max_model_len: int) -> None:
        self.table = np.zeros((max_running + 1, max_model_len), dtype=np.int32)
        self._free_rows = list(range(max_running, 0, -1))

    @property
    def num_free_rows(self) -> int:
        return len(self._free_rows)

    def alloc_row(self) -> int:
        return self._free_rows.pop()

    def free_row(self, row: int) -> None:
        self._free_rows.append(row)
