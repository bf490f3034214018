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
