"""Device plumbing for gpu_bench: timing, the two ceilings, versions, names, freeing memory."""

from __future__ import annotations

import gc
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

import torch

L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100/H200: 50 MB)
# A GPU-side spin queued before each timed call's start event (about 1 ms at 2 GHz): the host
# enqueues the call's kernels while the GPU spins, so the sample is GPU time only, not the
# Python launch overhead of a wrapper whose kernels are shorter than its host code.
HOST_LEAD_CYCLES = 2_000_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device | str = "cuda", warmup: int = 3,
              iters: int = 10) -> float:  # fmt: skip
    """The median of `time_ms` samples."""
    samples = sorted(time_ms(fn, torch.device(device), warmup, iters))
    return samples[len(samples) // 2]


def time_ms(
    fn: Callable[[], object], device: torch.device, warmup: int, iters: int, flush: bool = False
) -> list[float]:
    """Milliseconds per call, one sample per call: CUDA events on a GPU, perf_counter on CPU.
    On a GPU each call's start event waits behind a spin kernel (HOST_LEAD_CYCLES), so a sample
    is the GPU time of the call's kernels even where launching them takes longer on the host.
    With `flush`, a 256 MiB buffer is overwritten before each call (outside the timing) so that
    small working sets are read from memory, not from L2 (GPU only)."""
    flush = flush and device.type == "cuda"
    scratch = torch.empty(L2_FLUSH_BYTES if flush else 0, dtype=torch.uint8, device=device)
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(iters):
        if flush:
            scratch.fill_(1)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(HOST_LEAD_CYCLES)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def copy_bandwidth(device: torch.device, nbytes: int, iters: int) -> dict[str, float]:
    """Device-to-device copy of `nbytes`: bytes read + written per second, best of `iters`."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=2, iters=iters)
    best = min(ms)
    return {"bytes_per_s": 2 * nbytes / (best / 1e3), "buffer_bytes": nbytes, "best_ms": best,
            "median_ms": statistics.median(ms), "iters": iters}  # fmt: skip


def gemm_rate(device: torch.device, n: int, dtype: torch.dtype, iters: int) -> dict[str, float]:
    """n x n x n matmul of random data: FLOP/s, best of `iters`."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    ms = time_ms(lambda: torch.matmul(a, b, out=out), device, warmup=3, iters=iters)
    best = min(ms)
    return {"flops_per_s": 2 * n**3 / (best / 1e3), "n": n, "dtype": str(dtype).split(".")[-1],
            "best_ms": best, "median_ms": statistics.median(ms), "iters": iters}  # fmt: skip


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()})"


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200'; 'cpu (x86_64)' -> 'cpu-x86-64'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        res = subprocess.run([exe, query, "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    return res.stdout.strip() or res.stderr.strip()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}  # fmt: skip
    for mod in ("triton", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - a missing or broken package is recorded
            out[mod] = f"unavailable: {e}"
    out["nvidia_smi"] = _nvidia_smi()
    return out


def free_memory(device: torch.device) -> dict[str, float] | None:
    """Collects garbage and returns cached blocks to the driver; reports what is still held."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return {"allocated_gib": torch.cuda.memory_allocated(device) / 2**30,
            "free_gib": free / 2**30, "total_gib": total / 2**30}  # fmt: skip
