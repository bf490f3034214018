"""The one-copy upload keeps every view 16-byte aligned (Triton compiles a kernel variant per
pointer alignment, so unaligned views would trigger compiles mid-serving)."""

from __future__ import annotations

import numpy as np
import torch

from raylight.engine.host_to_device import HostToDevice


def test_packed_views_are_aligned_and_exact() -> None:
    up = HostToDevice(torch.device("cpu"), packed=True)
    rng = np.random.default_rng(0)
    for _ in range(20):
        arrays = [rng.integers(-9, 9, int(n)) for n in rng.integers(0, 7, 6)]
        views = up.upload(arrays)
        assert [v.tolist() for v in views] == [a.tolist() for a in arrays]
        assert all(v.dtype == torch.int64 and v.data_ptr() % 16 == 0 for v in views if len(v))


def test_unpacked_cpu_upload() -> None:
    views = HostToDevice(torch.device("cpu")).upload([np.arange(3), np.arange(2)])
    assert [v.tolist() for v in views] == [[0, 1, 2], [0, 1]]
