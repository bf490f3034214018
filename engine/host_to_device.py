"""Moves a step's small int64 host arrays to the device in one copy.

Each separate host-to-device copy of pageable memory costs a synchronous driver call (tens of
microseconds on a GPU host); a decode step needs about eight arrays. They are concatenated into
one pinned staging buffer and copied once, then split into views on the device.
"""

from __future__ import annotations

import numpy as np
import torch


class HostToDevice:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._staging = torch.empty(0, dtype=torch.int64)

    def upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """int64 host arrays -> int64 device tensors (views of one buffer), in order."""
        sizes = [a.shape[0] for a in arrays]
        total = sum(sizes)
        if not self._pinned:
            return list(torch.from_numpy(np.concatenate(arrays)).split(sizes))
        if self._staging.shape[0] < total:
            self._staging = torch.empty(max(total, 2 * self._staging.shape[0]), dtype=torch.int64,
                                        pin_memory=True)  # fmt: skip
        # Safe to overwrite: the previous step's copy finished before its sampled ids came back.
        np.concatenate(arrays, out=self._staging.numpy()[:total])
        on_device = self._staging[:total].to(self.device, non_blocking=True)
        return list(on_device.split(sizes))
