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
        """`packed` (default: on CUDA) stages through one pinned buffer; tests force it on CPU,
        where the buffer is plain memory and the views alias it until the next upload."""
        self.device = device
        self._pinned = device.type == "cuda" if packed is None else packed
        self._pin_memory = device.type == "cuda"
        self._staging = torch.empty(0, dtype=torch.int64)

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
        if self._staging.shape[0] < total:
            self._staging = torch.empty(max(total, 2 * self._staging.shape[0]), dtype=torch.int64,
                                        pin_memory=self._pin_memory)  # fmt: skip
        # Safe to overwrite: the previous step's copy finished before its sampled ids came back.
        staging = self._staging.numpy()
        for a, start in zip(arrays, starts[:-1].tolist()):
            staging[start : start + a.shape[0]] = a
        on_device = self._staging[:total].to(self.device, non_blocking=True)
        return [on_device[s : s + n] for s, n in zip(starts[:-1].tolist(), sizes)]
