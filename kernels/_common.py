"""Argument checks and interpreter detection shared by the kernel launchers.

Launchers raise ValueError with the argument's name and what was expected, so a caller sees
"q: expected 3 dims [T, heads, D], got (5, 4)" instead of a Triton compile error or a silent
out-of-bounds read.
"""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# A KV pool may also hold FP8 (e4m3, no scale: vLLM's kv_cache_dtype="fp8" with scale 1).
FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_KV_MAX = 448.0  # e4m3's largest finite value: stores saturate there
KV_DTYPES = (*FLOAT_DTYPES, FP8_KV_DTYPE)
INDEX_DTYPES = (torch.int32, torch.int64)


def interpreting(*tensors: torch.Tensor) -> bool:
    """True when kernels run in the Triton interpreter (TRITON_INTERPRET=1 or CPU tensors).

    The interpreter computes `tl.dot` on bf16 operands wrongly, so kernels that use it cast
    their dot operands to fp32 when this is true.
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return any(t.device.type == "cpu" for t in tensors)


def check_tensor(
    name: str,
    t: torch.Tensor,
    ndim: int,
    dtypes: tuple[torch.dtype, ...],
    layout: str,
) -> None:
    """Checks that `t` is a tensor with `ndim` dims and one of `dtypes`; layout names the dims."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name}: expected dtype in ({names}), got {t.dtype}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: last dim must be contiguous (stride 1), got {t.stride()}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name}: dim {dim} ({what}) must be {expected}, got shape {tuple(t.shape)}"
        )


def check_power_of_two(name: str, value: int, lo: int = 16, hi: int = 256) -> None:
    if value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name}: must be a power of two in [{lo}, {hi}], got {value}")


def pdl_enabled(pdl: bool, *tensors: torch.Tensor) -> bool:
    """Whether a launch asked to use programmatic dependent launch (PDL) really does: never in
    the interpreter, which has no grid dependencies."""
    return pdl and not interpreting(*tensors)


def pdl_launch_options(enabled: bool) -> dict[str, bool]:
    """Launch keywords for PDL: the kernel may start while the previous kernel on the stream
    finishes (Hopper and later; recorded as programmatic edges when captured in a CUDA graph).
    The kernel must then call `pdl_wait` (kernels/_common_jit.py) before it reads or writes
    anything an earlier kernel touches."""
    return {"launch_pdl": True} if enabled else {}
