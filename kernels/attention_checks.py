"""Argument checks shared by the prefill and decode attention launchers.

The layout they enforce is the engine's AttentionMetadata (engine/attention/backend.py):
q [T, Hq, D]; k_cache, v_cache [num_slots, Hk, D] with Hq a multiple of Hk, in q's dtype or
FP8 e4m3 (read and converted to q's dtype in the kernels); req_to_token
int32 [rows, max_model_len]; req_rows and seq_lens_kv int64 (or int32) [B]. Last dims must be
contiguous; other strides are passed to the kernels. Values (slots, rows, lengths) are not
checked: that would need a host sync.
"""

from __future__ import annotations

import functools

import torch

from raylight.kernels._common import (
    FLOAT_DTYPES,
    FP8_KV_DTYPE,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
)

MAX_HEAD_DIM = 256


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 4 for CPU / the interpreter."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _check_kv(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    check_tensor("q", q, 3, FLOAT_DTYPES, "[T, heads, D]")
    kv_dtypes = (q.dtype, FP8_KV_DTYPE)
    check_tensor("k_cache", k_cache, 3, kv_dtypes, "[num_slots, kv_heads, D] (q's dtype or fp8)")
    check_tensor("v_cache", v_cache, 3, (k_cache.dtype,), "[num_slots, kv_heads, D] (k_cache's)")
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"v_cache: expected k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}"
        )
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = k_cache.shape[1]
    if k_cache.shape[2] != head_dim or head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim: q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} must share "
            f"head_dim <= {MAX_HEAD_DIM}"
        )
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_last_dim_contiguous(name, t)


def _check_table(
    req_to_token: torch.Tensor, req_rows: torch.Tensor, seq_lens_kv: torch.Tensor, batch: int
) -> None:
    check_tensor("req_to_token", req_to_token, 2, (torch.int32,), "[rows, max_model_len]")
    check_last_dim_contiguous("req_to_token", req_to_token)
    check_tensor("req_rows", req_rows, 1, INDEX_DTYPES, "[B]")
    check_tensor("seq_lens_kv", seq_lens_kv, 1, INDEX_DTYPES, "[B]")
    for name, t in (("req_rows", req_rows), ("seq_lens_kv", seq_lens_kv)):
        if t.shape[0] != batch:
            raise ValueError(
                f"{name}: expected {batch} entries (one per request), got {t.shape[0]}"
            )
        if batch > 1 and t.stride(0) != 1:
            raise ValueError(f"{name}: must be contiguous, got stride {t.stride()}")


def check_attention_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens_kv: torch.Tensor,
    out: torch.Tensor | None,
    batch: int | None = None,
) -> torch.Tensor:
    """Validates the arguments; returns `out`, allocated like q when None.

    batch defaults to q's token count (decode: one token per request).
    """
    _check_kv(q, k_cache, v_cache)
    _check_table(req_to_token, req_rows, seq_lens_kv, q.shape[0] if batch is None else batch)
    check_same_device(
        q=q, k_cache=k_cache, v_cache=v_cache, req_to_token=req_to_token,
        req_rows=req_rows, seq_lens_kv=seq_lens_kv,
    )  # fmt: skip
    if out is None:
        return torch.empty_like(q)
    check_tensor("out", out, 3, (q.dtype,), "[T, heads, D] (q's dtype)")
    if out.shape != q.shape or out.device != q.device:
        raise ValueError(
            f"out: expected shape {tuple(q.shape)} on {q.device}, "
            f"got {tuple(out.shape)} on {out.device}"
        )
    check_last_dim_contiguous("out", out)
    return out
