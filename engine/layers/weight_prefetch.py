"""Streams the next linear layer's weights into L2 while a small-batch decode step runs its
latency-bound kernels (engine option l2_prefetch_attn_mb / l2_prefetch_mb).

At batch 1 the memory is busy only during the linear layers: rotary, attention, the norms and
SiLU move a few MB and take about 12 us a layer (H200). A prefetch (kernels/l2_prefetch.py)
issued as each linear layer finishes fills that time: o_proj's weights during rotary and
attention, the first MB of gate_up, down and the next layer's qkv during a norm or SiLU.

Prefetches go on a side stream forked from the current one, so they add no launch to the step's
chain, and are joined before the next linear layer (a CUDA graph must join what it forks). They
run only while a CUDA graph is being captured and for at most `max_rows` rows: eagerly, the
events would cost the host more than they save. A prefetch changes no value, so outputs are
identical with and without.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from raylight.kernels.l2_prefetch import l2_prefetch, prefetch_supported

MB = 1 << 20


@dataclass
class WeightPrefetch:
    attn_bytes: int  # of o_proj's weights, during rotary and attention
    head_bytes: int  # of gate_up's, down's and the next qkv's, during a norm or SiLU
    max_rows: int = 8
    _side: torch.cuda.Stream | None = field(default=None, repr=False)
    _pending: torch.cuda.Event | None = field(default=None, repr=False)

    @classmethod
    def from_mb(cls, attn_mb: float, head_mb: float) -> WeightPrefetch | None:
        """None when both sizes are 0 (the option is off)."""
        if attn_mb < 0 or head_mb < 0:
            raise ValueError(f"l2 prefetch sizes must be >= 0 MB, got {attn_mb}, {head_mb}")
        if attn_mb == 0 and head_mb == 0:
            return None
        return cls(int(attn_mb * MB), int(head_mb * MB))

    def active(self, x: torch.Tensor) -> bool:
        """Whether this forward pass (input x [T, hidden]) prefetches."""
        return (x.shape[0] <= self.max_rows and prefetch_supported(x)
                and torch.cuda.is_current_stream_capturing())  # fmt: skip

    def start(self, weight: torch.Tensor, nbytes: int) -> None:
        """Joins the previous prefetch, then forks one of `weight`'s first `nbytes` bytes."""
        self.join()
        if nbytes <= 0:
            return
        main = torch.cuda.current_stream(weight.device)
        if self._side is None:
            self._side = torch.cuda.Stream(weight.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            l2_prefetch(weight, nbytes)
        self._pending = torch.cuda.Event()
        self._pending.record(self._side)

    def join(self) -> None:
        """Makes the current stream wait for the pending prefetch (it has long finished: it only
        issues requests)."""
        if self._pending is not None:
            torch.cuda.current_stream().wait_event(self._pending)
            self._pending = None
