"""Token embedding and LM head with the vocabulary split across tensor-parallel ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylight.engine.layers.linear import check_shape, linear
from raylight.engine.parallel import TPGroup


class VocabParallelEmbedding(nn.Module):
    """Rank r holds rows [r * n, (r + 1) * n) of the (padded) table; other ids give zeros there,
    and the all-reduce sums the one non-zero row."""

    def __init__(self, vocab_size: int, hidden: int, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.rows_local = -(-vocab_size // tp.size)
        self.start = tp.rank * self.rows_local
        self.weight = nn.Parameter(torch.empty(self.rows_local, hidden, dtype=dtype), False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows_local)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)

    def load_shard(self, name: str, loaded: torch.Tensor, shard: int = 0) -> None:
        check_shape(name, loaded, (self.vocab_size, self.weight.shape[1]))
        rows = loaded[self.start : self.start + self.rows_local]
        self.weight.data.zero_()
        self.weight.data[: rows.shape[0]].copy_(rows)


class ParallelLMHead(VocabParallelEmbedding):
    """logits = hidden @ E^T, gathered over ranks and cut back to the real vocabulary."""

    skinny: bool = False  # set by layers.fused.use_fused_kernels
    pdl: bool = False  # likewise

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, H] -> logits: [N, vocab]
        logits = linear(hidden, self.weight, None, self.skinny, self.pdl)
        return self.tp.all_gather_last_dim(logits)[:, : self.vocab_size]
