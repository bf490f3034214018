"""Asks the GPU to start reading a tensor's bytes into its L2 cache, and returns at once.

A batch-1 decode step leaves the memory idle while its small kernels run (rotary, attention,
norms, SiLU: latency-bound, a few MB of traffic): the next linear layer's weights can stream
into L2 then, so that layer reads part of them from L2 instead of HBM. Each lane issues one
bulk prefetch (`cp.async.bulk.prefetch.L2`, Hopper's TMA: fire and forget, nothing to wait
for) of CHUNK bytes; one warp per program, so the requests come from many SMs at once.

A prefetch has no effect on any value, so its pure-torch reference is doing nothing
(`l2_prefetch_ref`); the interpreter, CPUs and GPUs before sm_90 get that.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from raylight.kernels._common import interpreting

LANES = 32  # one warp per program
DEFAULT_CHUNK = 16 * 1024  # bytes per bulk prefetch


@triton.jit
def _l2_prefetch_kernel(base_ptr, nbytes, CHUNK: tl.constexpr, LANES: tl.constexpr):
    """Lane i of program p prefetches bytes [(p * LANES + i) * CHUNK, +CHUNK) of base (a byte
    pointer), the last one clipped to nbytes; sizes are multiples of 16 (TMA's unit)."""
    lane = tl.program_id(0).to(tl.int64) * LANES + tl.arange(0, LANES)
    start = lane * CHUNK
    size = (tl.minimum(nbytes - start, CHUNK) // 16 * 16).to(tl.int32)
    ptrs = base_ptr + tl.where(size > 0, start, 0)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; "
        "mov.u32 $0, 0; }",
        "=r,l,r",
        [ptrs, size],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


def l2_prefetch_ref(t: torch.Tensor, nbytes: int | None = None) -> None:
    """The reference: a prefetch changes no value."""


def prefetch_supported(t: torch.Tensor) -> bool:
    """Whether `l2_prefetch` issues anything for `t`: a CUDA tensor on sm_90 or later, outside
    the interpreter."""
    if t.device.type != "cuda" or interpreting(t):
        return False
    return torch.cuda.get_device_capability(t.device)[0] >= 9


def l2_prefetch(t: torch.Tensor, nbytes: int | None = None, chunk: int = DEFAULT_CHUNK) -> None:
    """Starts reading the first `nbytes` (default: all) of contiguous `t` into L2; does nothing
    where `prefetch_supported` is false."""
    if not t.is_contiguous():
        raise ValueError(f"l2_prefetch: tensor must be contiguous, got strides {t.stride()}")
    if chunk <= 0 or chunk % 16:
        raise ValueError(f"l2_prefetch: chunk must be a positive multiple of 16, got {chunk}")
    total = t.numel() * t.element_size()
    nbytes = total if nbytes is None else min(int(nbytes), total)
    if nbytes < 16 or not prefetch_supported(t):
        return
    base = t.view(-1).view(torch.uint8)
    grid = (triton.cdiv(nbytes, LANES * chunk),)
    _l2_prefetch_kernel[grid](base, nbytes, CHUNK=chunk, LANES=LANES, num_warps=1)
