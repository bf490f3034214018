"""HF transformers' own continuous batching (`model.generate_batch`) on the benchmark model.

Default continuous-batching config; greedy, eos disabled (eos_token_id=-1) so outputs have the
asked length. Output tokens are counted from the results, not assumed. The rate is over the
generation window (first request created to last request finished, HF's own timestamps) when the
installed version reports them, else over the whole call (warm-up and teardown included); the
report says which.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import torch

from raylight.benchmarks.gpu_bench_device import free_memory


def load_hf_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=str(device))
    except (ImportError, ValueError, TypeError):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model.eval()


def _window(outputs: list[object]) -> float | None:
    """Seconds from the first request's creation to the last one's finish, if reported."""
    starts = [getattr(o, "created_time", None) for o in outputs]
    ends = []
    for o in outputs:
        span = getattr(o, "lifespan", None)
        stamps = getattr(o, "timestamps", None)
        if span and span[1] and span[1] > 0:
            ends.append(span[1])
        elif stamps:
            ends.append(stamps[-1])
    if not outputs or None in starts or len(ends) != len(outputs):
        return None
    window = max(ends) - min(starts)
    return window if window > 0 else None


def generate_batch(
    model: torch.nn.Module, prompts: list[list[int]], output_len: int
) -> dict[str, object]:
    from transformers import GenerationConfig

    try:  # eos -1: HF's continuous batching never stops early (ignore_eos)
        cfg = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=-1,
                               pad_token_id=0)  # fmt: skip
    except (ValueError, TypeError):  # a version that refuses -1: tokens are counted anyway
        cfg = GenerationConfig(max_new_tokens=output_len, do_sample=False)
    accepted = inspect.signature(model.generate_batch).parameters
    extra = {k: v for k, v in (("progress_bar", False), ("record_timestamps", True))
             if k in accepted}  # fmt: skip
    t0 = time.perf_counter()
    result = model.generate_batch(prompts, generation_config=cfg, **extra)
    wall = time.perf_counter() - t0
    outputs = list(result.values()) if isinstance(result, dict) else list(result)
    out_tokens = sum(len(getattr(o, "generated_tokens", []) or []) for o in outputs)
    errors = [str(o.error) for o in outputs if getattr(o, "error", None)]
    window = _window(outputs)
    basis = "generation_window" if window is not None else "wall_incl_warmup"
    seconds = window if window is not None else wall
    prompt_tokens = sum(len(p) for p in prompts)
    return {"requests": len(prompts), "results": len(outputs), "output_tokens": out_tokens,
            "expected_output_tokens": len(prompts) * output_len, "wall_s": wall,
            "window_s": window, "timing_basis": basis,
            "out_tok_s": out_tokens / seconds,
            "total_tok_s": (out_tokens + prompt_tokens) / seconds,
            "wall_out_tok_s": out_tokens / wall, "errors": errors[:5]}  # fmt: skip


def run_hf(
    model_dir: Path, prompts: list[list[int]], output_len: int, device: torch.device,
    dtype: torch.dtype,
) -> dict[str, object]:  # fmt: skip
    """Loads the model, runs generate_batch once, frees the model (even on failure)."""
    t0 = time.perf_counter()
    model = load_hf_model(model_dir, device, dtype)
    load_s = time.perf_counter() - t0
    print(f"  HF model loaded in {load_s:.1f} s; generate_batch on {len(prompts)} requests",
          flush=True)  # fmt: skip
    try:
        return {"load_s": load_s, **generate_batch(model, prompts, output_len)}
    finally:
        del model
        free_memory(device)
