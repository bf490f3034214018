"""Step-time model of one engine step: time = a + b * prefill tokens + c * decode requests
+ d * KV tokens read. Linear, so it can be fitted to measured step timings by least squares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from raylight.engine.batch import Batch

# Llama-3.1-8B shape on one H200 in bf16, from rooflines (not yet measured on the device):
_HBM_BYTES_PER_S = 4.3e12  # achievable, about 90% of the 4.8 TB/s peak
_WEIGHT_BYTES = 16.06e9  # 8.03e9 parameters x 2 bytes, read once per step
_FLOPS_PER_S = 600e12  # about 60% of the 989 TFLOP/s dense bf16 peak
_FLOPS_PER_TOKEN = 2 * 8.03e9  # one multiply-add per parameter per token
_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # (K, V) x layers x kv heads x head_dim x bf16


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds per step from the batch's shape; every coefficient >= 0."""

    base_s: float  # a: per step (weights read, launches)
    prefill_token_s: float  # b: per prefill token (GEMM FLOPs)
    decode_request_s: float  # c: per decoding request (its GEMM row, sampling)
    kv_token_s: float  # d: per KV token attention reads

    def step_time(self, prefill_tokens: int, decode_requests: int, kv_tokens: int) -> float:
        return (
            self.base_s
            + self.prefill_token_s * prefill_tokens
            + self.decode_request_s * decode_requests
            + self.kv_token_s * kv_tokens
        )

    def batch_time(self, batch: Batch) -> float:
        return self.step_time(*batch_features(batch))


def h200_llama3_8b() -> CostModel:
    """Roofline coefficients: a = weights / HBM bandwidth + ~0.25 ms of launches (about 4 ms);
    b = 2 x 8e9 FLOPs / 600 TFLOP/s (27 us); c = 20 us, below b because decode GEMMs partly hide
    under the weight read; d = 128 KiB of K/V per token / 4.3 TB/s (30 ns)."""
    return CostModel(
        base_s=_WEIGHT_BYTES / _HBM_BYTES_PER_S + 0.25e-3,
        prefill_token_s=_FLOPS_PER_TOKEN / _FLOPS_PER_S,
        decode_request_s=20e-6,
        kv_token_s=_KV_BYTES_PER_TOKEN / _HBM_BYTES_PER_S,
    )


def h100_llama3_8b() -> CostModel:
    """As `h200_llama3_8b` on an H100 SXM: the same bf16 FLOP/s, 3.35 TB/s HBM (90%: 3.0 TB/s).
    The pool is ~450k tokens: 0.9 x 80 GB - 16 GB weights - ~2 GB activations, 128 KiB/token."""
    hbm = 0.9 * 3.35e12
    return CostModel(
        base_s=_WEIGHT_BYTES / hbm + 0.25e-3,
        prefill_token_s=_FLOPS_PER_TOKEN / _FLOPS_PER_S,
        decode_request_s=20e-6,
        kv_token_s=_KV_BYTES_PER_TOKEN / hbm,
    )


def h100x4_llama3_70b() -> CostModel:
    """Llama-3.1-70B, TP=4 on H100 SXM, per replica: each GPU reads 1/4 of the 141 GB weights
    and of the 320 KiB/token K/V; + ~1 ms of all-reduces per step (2 per layer, 80 layers); GEMM
    FLOPs split 4 ways. The pool is ~400k tokens: 0.9 x 80 - 35 GB weights - ~4 GB, 80 KiB/token
    per GPU. Roofline only, unmeasured."""
    hbm, tp = 0.9 * 3.35e12, 4
    return CostModel(
        base_s=141e9 / tp / hbm + 1.25e-3,
        prefill_token_s=2 * 70.6e9 / tp / _FLOPS_PER_S,
        decode_request_s=40e-6,
        kv_token_s=2 * 80 * 8 * 128 * 2 / tp / hbm,
    )


def l4_llama3_8b() -> CostModel:
    """Llama-3.1-8B on one NVIDIA L4 (24 GB, 300 GB/s, 121 TFLOP/s dense bf16), a common small
    deployment whose pool binds before compute: 90% of 300 GB/s, 60% of the FLOP/s; a decode
    request costs its own GEMM row (2 x 8e9 FLOPs; the weight read no longer hides it). The
    pool is ~30k tokens: 0.9 x 24 GB - 16 GB weights - ~1.5 GB, 128 KiB/token. Roofline only,
    unmeasured."""
    hbm, flops = 0.9 * 300e9, 0.6 * 121e12
    return CostModel(
        base_s=_WEIGHT_BYTES / hbm + 0.25e-3,
        prefill_token_s=_FLOPS_PER_TOKEN / flops,
        decode_request_s=_FLOPS_PER_TOKEN / flops,
        kv_token_s=_KV_BYTES_PER_TOKEN / hbm,
    )


COST_MODELS = {
    "h200-llama3-8b": h200_llama3_8b,
    "h100-llama3-8b": h100_llama3_8b,
    "h100x4-llama3-70b": h100x4_llama3_70b,
    "l4-llama3-8b": l4_llama3_8b,
}


def batch_features(batch: Batch) -> tuple[int, int, int]:
    """(prefill tokens, decode requests, KV tokens read). A request with one new token is a
    decode; every other new token is a prefill token."""
    decodes = int((batch.num_new == 1).sum())
    return batch.num_tokens - decodes, decodes, int(batch.seq_lens_kv.sum())


def fit_cost_model(samples: Iterable[tuple[float, float, float, float]]) -> CostModel:
    """Least-squares fit of the four coefficients from (prefill tokens, decode requests, KV
    tokens, seconds) samples; coefficients are clipped at 0 (a negative one means the samples
    do not vary that feature enough)."""
    data = np.asarray(list(samples), dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 4 or len(data) < 4:
        raise ValueError("need at least 4 samples of (prefill, decodes, kv_tokens, seconds)")
    x = np.column_stack([np.ones(len(data)), data[:, :3]])
    coef, *_ = np.linalg.lstsq(x, data[:, 3], rcond=None)
    a, b, c, d = np.maximum(coef, 0.0).tolist()
    return CostModel(base_s=a, prefill_token_s=b, decode_request_s=c, kv_token_s=d)
