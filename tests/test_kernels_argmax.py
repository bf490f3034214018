"""Row-wise argmax kernel against torch.argmax (first index of the max wins)."""

from __future__ import annotations

import pytest
import torch

from raylight.kernels import argmax as am
from raylight.kernels.argmax import argmax_rows, argmax_rows_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 37), (2, 300), (5, 1000)])
def test_matches_torch(monkeypatch, dtype, rows: int, vocab: int) -> None:
    monkeypatch.setattr(am, "CHUNK", 64)  # several chunks per row under the interpreter
    gen = torch.Generator().manual_seed(rows * vocab)
    x = torch.randn(rows, vocab, generator=gen).to(dtype)
    assert torch.equal(argmax_rows(x), argmax_rows_ref(x))


def test_ties_masks_and_strides(monkeypatch) -> None:
    monkeypatch.setattr(am, "CHUNK", 16)
    x = torch.zeros(4, 70)
    x[0, [5, 40, 69]] = 3.0  # ties across chunks: the first wins
    x[1] = float("-inf")  # everything masked: index 0, as torch
    x[2, 69] = 1.0  # the max in the ragged last chunk
    x[3, [17, 18]] = 2.0  # a tie inside one chunk
    assert argmax_rows(x).tolist() == argmax_rows_ref(x).tolist() == [5, 0, 69, 17]
    wide = torch.randn(3, 90)
    assert torch.equal(argmax_rows(wide[:, :70]), wide[:, :70].argmax(-1))  # row stride 90


def test_errors() -> None:
    with pytest.raises(ValueError, match="x: expected 2 dims"):
        argmax_rows(torch.randn(5))
    with pytest.raises(ValueError, match="empty row"):
        argmax_rows(torch.randn(2, 0))
    assert argmax_rows(torch.randn(0, 5)).shape == (0,)


@pytest.mark.gpu
def test_gpu_vocab_sized() -> None:
    x = torch.randn(257, 128256, device="cuda", dtype=torch.bfloat16)
    x[7, [100, 90000]] = 50.0
    assert torch.equal(argmax_rows(x), x.argmax(-1))
