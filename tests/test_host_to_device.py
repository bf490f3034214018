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


def test_pending_ids_written_by_lanes_or_in_order() -> None:
    """The step before's sampled ids over a graph's input-id row: scattered lanes, or (steady
    decode, lanes None) the first len(ids) lanes in order."""
    import numpy as np

    from raylight.engine.cuda_graphs import write_pending
    from raylight.engine.model_runner import _is_arange

    ids = torch.zeros(6, dtype=torch.int64)
    write_pending(ids, (torch.tensor([4, 1]), torch.tensor([7, 9])))
    assert ids.tolist() == [0, 9, 0, 0, 7, 0]
    write_pending(ids, (None, torch.tensor([5, 6, 8])))
    assert ids.tolist() == [5, 6, 8, 0, 7, 0]
    write_pending(ids, None)
    assert ids.tolist() == [5, 6, 8, 0, 7, 0]
    assert _is_arange(np.arange(3)) and _is_arange(np.array([0]))
    assert not _is_arange(np.array([], dtype=np.int64)) and not _is_arange(np.array([0, 2, 2]))
    assert not _is_arange(np.array([1, 2])) and not _is_arange(np.array([0, 2, 1, 3]))
