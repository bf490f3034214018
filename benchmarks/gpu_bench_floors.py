"""Byte and FLOP accounting for gpu_bench: what a step or a kernel must move or compute.

Pure functions of the architecture (no torch, no device): the floors are these counts over the
ceilings measured in the same run. Conventions:
- A decode step reads every linear weight once (all layers + lm_head, tied or not), one
  embedding row and the norm weights per request, the K/V of every attended token, and writes the
  new token's K/V; activations are not counted (they are small and may stay on chip).
- A prefill does 2 FLOPs per weight per token in the layers' linear layers, the lm_head for the
  last token only, and causal attention: 4 * heads * head_dim FLOPs per (query, key) pair
  (QK^T and PV), over T(T+1)/2 pairs per layer.
"""

from __future__ import annotations

from raylight.engine.model_config import ModelArchConfig


def layer_linear_params(arch: ModelArchConfig) -> int:
    """Weights (and biases) of one decoder layer's q/k/v/o and gate/up/down projections."""
    h, d = arch.hidden_size, arch.head_dim
    q_out, kv_out = arch.num_heads * d, arch.num_kv_heads * d
    attn = h * q_out + 2 * h * kv_out + q_out * h
    mlp = 3 * h * arch.intermediate_size
    bias = 0
    if arch.qkv_bias:
        bias += q_out + 2 * kv_out
    if arch.o_bias:
        bias += h
    if arch.mlp_bias:
        bias += 2 * arch.intermediate_size + h
    return attn + mlp + bias


def lm_head_params(arch: ModelArchConfig) -> int:
    return arch.vocab_size * arch.hidden_size


def linear_params(arch: ModelArchConfig) -> int:
    """All linear layers a decode step multiplies by: every layer's projections + lm_head."""
    return arch.num_layers * layer_linear_params(arch) + lm_head_params(arch)


def kv_bytes_per_token(arch: ModelArchConfig, dtype_bytes: int) -> int:
    """K and V of one token over all layers."""
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * dtype_bytes


def decode_step_bytes(
    arch: ModelArchConfig, dtype_bytes: int, batch: int, attended_tokens: int,
    kv_dtype_bytes: int | None = None,
) -> dict[str, int]:  # fmt: skip
    """Bytes one decode step of `batch` requests must move; `attended_tokens` is the K/V
    tokens attended over, summed over the batch (the new tokens included). K/V elements take
    `kv_dtype_bytes` (default: `dtype_bytes`; 1 with an FP8 pool)."""
    kv_item = dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    weights = linear_params(arch) * dtype_bytes
    norms = (2 * arch.num_layers + 1) * arch.hidden_size * dtype_bytes
    embed_rows = batch * arch.hidden_size * dtype_bytes
    kv_read = attended_tokens * kv_bytes_per_token(arch, kv_item)
    kv_write = batch * kv_bytes_per_token(arch, kv_item)
    total = weights + norms + embed_rows + kv_read + kv_write
    return {"weights": weights, "norms": norms, "embed_rows": embed_rows, "kv_read": kv_read,
            "kv_write": kv_write, "total": total}  # fmt: skip


def causal_pairs(q_len: int, cached: int = 0) -> int:
    """(query, key) pairs of causal attention: query i (0-based) sees cached + i + 1 keys."""
    return q_len * cached + q_len * (q_len + 1) // 2


def attention_flops(num_heads: int, head_dim: int, pairs: int) -> int:
    """QK^T and PV: 2 FLOPs each per (query, key) pair, per head and per head dim."""
    return 4 * num_heads * head_dim * pairs


def prefill_flops(arch: ModelArchConfig, prompt_len: int) -> dict[str, int]:
    """FLOPs of one prefill of `prompt_len` tokens that samples one token."""
    linear = 2 * arch.num_layers * layer_linear_params(arch) * prompt_len
    lm_head = 2 * lm_head_params(arch)
    attention = arch.num_layers * attention_flops(
        arch.num_heads, arch.head_dim, causal_pairs(prompt_len)
    )
    return {"linear": linear, "lm_head": lm_head, "attention": attention,
            "total": linear + lm_head + attention}  # fmt: skip


def tpot_floor_s(
    arch: ModelArchConfig, dtype_bytes: int, prompt_len: int, output_len: int, copy_bw: float,
    kv_dtype_bytes: int | None = None,
) -> float:  # fmt: skip
    """Batch-1 time per output token at the copy bandwidth (bytes/s). Decode step i (1-based,
    output_len - 1 of them) attends prompt_len + i tokens; the mean is used."""
    mean_attended = prompt_len + output_len / 2
    step = decode_step_bytes(arch, dtype_bytes, 1, round(mean_attended), kv_dtype_bytes)
    return step["total"] / copy_bw


def ttft_floor_s(arch: ModelArchConfig, prompt_len: int, gemm_flops: float) -> float:
    """Time to first token of one prompt at the GEMM rate (FLOP/s)."""
    return prefill_flops(arch, prompt_len)["total"] / gemm_flops


def decode_attention_bytes(
    batch: int, kv_len: int, heads: int, kv_heads: int, head_dim: int, dtype_bytes: int,
    kv_dtype_bytes: int | None = None,
) -> dict[str, int]:  # fmt: skip
    """What a paged decode-attention call must move: each request's K and V (elements of
    `kv_dtype_bytes`, default `dtype_bytes`), q in, out, and the int32 slot index of every
    attended token."""
    kv_item = dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    kv = 2 * batch * kv_len * kv_heads * head_dim * kv_item
    q_out = 2 * batch * heads * head_dim * dtype_bytes
    index = 4 * batch * kv_len
    return {"kv": kv, "q_out": q_out, "index": index, "total": kv + q_out + index}


def prefill_attention_flops(q_len: int, heads: int, head_dim: int) -> int:
    """One causal sequence of q_len tokens with no cached prefix."""
    return attention_flops(heads, head_dim, causal_pairs(q_len))
