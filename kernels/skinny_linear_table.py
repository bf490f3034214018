"""Launch settings of the small-batch linear kernel (kernels/skinny_linear.py): the measured
per-device table that benchmarks/skinny_sweep.py writes to skinny_linear_configs/<device>.json,
and the choice per shape and M between the kernel's settings and cuBLAS."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True, slots=True)
class SkinnyConfig:
    use_dot: bool
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


DEFAULT_CONFIG = SkinnyConfig(use_dot=False, block_n=16, block_k=512, num_warps=4, num_stages=3)
TABLE_DIR = Path(__file__).parent / "skinny_linear_configs"


def table_file_name(device_name: str) -> str:
    """A device's table file name: "NVIDIA H200" -> "NVIDIA_H200.json"."""
    return re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") + ".json"


def table_path(device_name: str) -> Path:
    return TABLE_DIR / table_file_name(device_name)


TableRows = list[tuple[int, SkinnyConfig | None, SkinnyConfig | None, SkinnyConfig | None]]


@functools.lru_cache(maxsize=8)
def load_table(device_name: str) -> dict[tuple[int, int], TableRows]:
    """The measured table for a device: (n, k) -> [(m, best config or None = cuBLAS, the
    kernel's best config even where cuBLAS wins or None, its best with the decode layer's
    fusion of that shape or else the kernel's)] by m. Written by benchmarks/skinny_sweep.py;
    empty when the device was never swept."""
    path = table_path(device_name)
    if not path.exists():
        return {}
    table: dict[tuple[int, int], TableRows] = {}
    for entry in json.loads(path.read_text())["entries"]:
        cfg = None if entry["config"] is None else SkinnyConfig(*entry["config"])
        kernel = entry.get("kernel_config")
        kernel_cfg = cfg if kernel is None else SkinnyConfig(*kernel)
        fused = entry.get("fused_config")
        fused_cfg = kernel_cfg if fused is None else SkinnyConfig(*fused)
        table.setdefault((entry["n"], entry["k"]), []).append(
            (entry["m"], cfg, kernel_cfg, fused_cfg)
        )
    for rows in table.values():
        rows.sort(key=lambda r: r[0])
    return table


@functools.lru_cache(maxsize=4)
def _cuda_device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


@functools.lru_cache(maxsize=1024)
def choose_config(
    m: int,
    n: int,
    k: int,
    device_name: str | None = None,
    prefer_kernel: bool = False,
    fused: bool = False,
) -> SkinnyConfig | None:
    """Launch settings for an [m, k] x [n, k]^T product, or None where cuBLAS is faster.

    From the device's swept table (the entry for the smallest swept m >= m); shapes never swept
    use the kernel at m = 1 only (where cuBLAS is weakest) with DEFAULT_CONFIG. prefer_kernel
    takes the kernel's best swept setting even where cuBLAS measured faster (a chain of Triton
    kernels can overlap with programmatic dependent launch; cuBLAS breaks it); fused, its best
    with the decode layer's fusion of that shape (skinny_sweep --fused), else as prefer_kernel.
    Cached: the layers ask on every forward."""
    if device_name is None:
        device_name = _cuda_device_name()
    for swept_m, cfg, kernel_cfg, fused_cfg in load_table(device_name).get((n, k), []):
        if swept_m >= m:
            if fused and fused_cfg is not None:
                return fused_cfg
            return kernel_cfg if (prefer_kernel or fused) and kernel_cfg is not None else cfg
    return DEFAULT_CONFIG if m == 1 else None


def gated_tiles(cfg: SkinnyConfig) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) of a gated launch with the swept `cfg` of its [2I, K] weight: a
    program reads gate and up rows, so half the outputs keep the swept bytes per program; with
    tensor cores half the K step too (two accumulators and tiles: 255 registers and a spill
    at 32 x 256, checked by tests/test_kernels_sm90_compile.py)."""
    block_k = max(16, cfg.block_k // 2) if cfg.use_dot else cfg.block_k
    return max(2, cfg.block_n // 2), block_k
