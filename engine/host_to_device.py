"""Moves a step's small int64 host arrays to the device in one copy.

Each separate host-to-device copy of pageable memory costs a synchronous driver call (tens of
microseconds on a GPU host); a decode step needs about eight arrays. They are concatenated into
one pinned staging buffer and copied once, then split into views on the device.
"""

from __future__ import annotations

import numpy as np
import torch


class HostToDevice:
    def __init__(self, device: torch.device, packed: bool | None = None) -> None:
        """`packed` (default: on CUDA) stages through pinned buffers; tests force it on CPU,
        where the buffers are plain memory and the views alias one until the upload after the
        next."""
        self.device = device
        self._pinned = device.type == "cuda" if packed is None else packed
        self._pin_memory = device.type == "cuda"
        # Two staging buffers used in turn, each with the event of its last copy: with overlap
        # a step is uploaded while the one before may not have run (nor read its buffer) yet.
        self._staging = [torch.empty(0, dtype=torch.int64) for _ in range(2)]
        self._copied = [torch.cuda.Event() if self._pin_memory else None for _ in range(2)]
        self._turn = 0

    def upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """int64 host arrays -> int64 device tensors (views of one buffer), in order.

        On the GPU every view starts 16-byte aligned: Triton specializes a kernel on its
        pointers' alignment, so views at odd int64 offsets would compile second variants of the
        attention kernels in the middle of serving (seconds each)."""
        sizes = [a.shape[0] for a in arrays]
        if not self._pinned:
            return list(torch.from_numpy(np.concatenate(arrays)).split(sizes))
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum([n + (n & 1) for n in sizes], out=starts[1:])  # even int64 offsets
        total = int(starts[-1])
        turn = self._turn
        self._turn ^= 1
        copied = self._copied[turn]
        if copied is not None:
            copied.synchronize()  # that copy was queued two uploads ago: long done in practice
        buffer = self._staging[turn]
        if buffer.shape[0] < total:
            buffer = torch.empty(max(total, 2 * buffer.shape[0]), dtype=torch.int64,
                                 pin_memory=self._pin_memory)  # fmt: skip
            self._staging[turn] = buffer
        staging = buffer.numpy()
        for a, start in zip(arrays, starts[:-1].tolist()):
            staging[start : start + a.shape[0]] = a
        on_device = buffer[:total].to(self.device, non_blocking=True)
        if copied is not None:
            copied.record()
        return [on_device[s : s + n] for s, n in zip(starts[:-1].tolist(), sizes)]
