"""Engine options (named like vLLM's) and their resolution into concrete values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from raylight.engine.model_config import ModelArchConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What a user may set. "auto" and None values are resolved by `resolve_engine_config`."""

    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 256
    # Tokens per step (prefill chunks + decodes). None: 8192 on CUDA, where larger chunks keep
    # prefill GEMMs near the tensor cores' rate (8192 vs 2048: +20% output tok/s on 256 x
    # 512/128, H100); 2048 on CPU.
    max_num_batched_tokens: int | None = None
    tensor_parallel_size: int = 1
    # Keep finished requests' K/V in a token-level radix tree and reuse it for shared prefixes.
    enable_prefix_caching: bool = True
    seed: int = 0
    device: str = "auto"
    # KV pool size in tokens. None: from free GPU memory on CUDA, `cpu_kv_cache_tokens` on CPU.
    num_kv_slots: int | None = None
    cpu_kv_cache_tokens: int = 32768
    gpu_memory_utilization: float = 0.9
    # "auto": "triton" on CUDA, "torch" elsewhere; "triton" on CPU runs in the interpreter.
    attention_backend: str = "auto"
    # How waiting requests are admitted (engine/admission.py). "past-future" (LightLLM's):
    # admit while the predicted future KV peak fits; it starts as "conservative" (reserve
    # prompt + max_tokens, which is the whole context when a request sets no max_tokens) and
    # learns output lengths from finished requests. "aggressive" (vLLM's): admit while slots are
    # free and preempt by recompute when they run out.
    admission_policy: str = "past-future"
    # Triton RMSNorm(+residual), rotary and SiLU-and-mul in the layers. None: on CUDA only.
    fused_kernels: bool | None = None
    # Triton linear layers for decode batches of at most 8 rows (kernels/skinny_linear.py)
    # where they beat cuBLAS. None: on CUDA only.
    skinny_linear: bool | None = None
    # Programmatic dependent launch for the decode chain's Triton kernels (Hopper and later;
    # ignored on older GPUs and on CPU): each may start while the previous one finishes, the
    # skinny linear layers reading their first weight tile before waiting. Off by default: on
    # the H200 batch-1 TPOT reads 4.553 ms with it and 4.556 ms without
    # (benchmarks/results/h200-2026-12-02-latency-pdl-release-after-wait-*.json).
    pdl: bool = False
    # Small decode steps run each RMSNorm, residual add and SiLU-and-mul inside the
    # neighbouring linear layer's Triton kernel (engine/models/llama.py forward_fused): 3 fewer
    # launches per layer. Needs fused_kernels and skinny_linear (one rank only). None ("auto"):
    # one-row steps, where every projection has a measured setting of the one-row kernel
    # (kernels/row_gemv.py; the Llama-3.1-8B shapes on an H200: batch-1 TPOT 4.241 vs 4.396 ms
    # unfused, benchmarks/results/h200-2026-12-04-latency-auto-fused.json, ...-unfused.json).
    # True: steps of up to 8 rows (slower with the 2-8 row kernels: 21 ms per step at batch 8
    # on the H200, h200-2026-12-02-split-profile-decode-fused.json). False: never.
    fuse_decode_layers: bool | None = None
    # Decode-only steps run rotary, the KV store and the merge of the attention splits inside
    # the decode attention kernel (kernels/decode_rope_attention.py): one launch per layer
    # instead of three. Takes effect with fused_kernels and the Triton attention backend. On
    # the H200 (Llama-3.1-8B shape): batch-1 TPOT 4.090-4.122 vs 4.239 ms off, offline 1000 x
    # 1024/1024 9,844 vs 9,760 output tok/s (benchmarks/results/h200-2026-12-04-latency-rope-
    # attention-*.json, ...-offline-rope-attention-*.json).
    fuse_decode_attention: bool = True
    # Run every step eagerly: no CUDA graphs (decode or prefill).
    enforce_eager: bool = False
    # Largest decode batch replayed from a CUDA graph; larger decode batches run eagerly.
    cuda_graph_max_batch: int = 256
    # Prefill and mixed steps of at most this many new tokens (and at most 16 requests) replay
    # a CUDA graph too (engine/prefill_graphs.py: an eager pass costs the host 20-30 ms); 0:
    # such steps run eagerly.
    prefill_graph_max_tokens: int = 2048
    # Schedule and launch each step while the one before still runs on the device (vLLM's
    # async scheduling, SGLang's overlap scheduler). None: on CUDA.
    async_scheduling: bool | None = None
    # The KV pool's element type: "auto" (the model's dtype) or "fp8" / "fp8_e4m3" (e4m3 with
    # scale 1, as vLLM's default fp8: half the bytes per token, so twice the tokens and half
    # the attention reads; values saturate at +-448).
    kv_cache_dtype: str = "auto"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    admission_policy: str


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Fully resolved: every field is a concrete value."""

    model_dir: Path
    arch: ModelArchConfig
    dtype: torch.dtype
    device: torch.device
    scheduler: SchedulerConfig
    tensor_parallel_size: int
    num_kv_slots: int | None  # None on CUDA until the runner measures free memory
    gpu_memory_utilization: float
    attention_backend: str
    seed: int
    kv_cache_dtype: torch.dtype  # the KV pool's: `dtype`, or float8_e4m3fn
    enable_prefix_caching: bool = False  # resolve_engine_config copies EngineOptions' (True)
    fused_kernels: bool = False
    skinny_linear: bool = False
    pdl: bool = False  # only on CUDA
    fuse_decode_layers: bool | None = None  # None: "auto" (EngineOptions)
    fuse_decode_attention: bool = False
    # Graphs are captured only on CUDA, with a backend that supports them, and at TP=1.
    enforce_eager: bool = False
    cuda_graph_max_batch: int = 256
    prefill_graph_max_tokens: int = 2048
    async_scheduling: bool = False


def resolve_engine_config(
    model_dir: Path, arch: ModelArchConfig, options: EngineOptions
) -> EngineConfig:
    if options.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(options.device)
    dtype = _resolve_dtype(options.dtype, arch, device)
    limit = arch.max_position_embeddings
    if arch.sliding_window is not None:
        # No sliding-window attention yet: within the window, full attention is identical.
        limit = min(limit, arch.sliding_window)
    max_model_len = options.max_model_len or limit
    if max_model_len > limit:
        raise ValueError(
            f"max_model_len={max_model_len} exceeds the model's context length {limit}"
        )
    batched_tokens = options.max_num_batched_tokens
    if batched_tokens is None:
        batched_tokens = 8192 if device.type == "cuda" else 2048
    if options.max_num_seqs < 1 or batched_tokens < 1:
        raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
    if options.cuda_graph_max_batch < 1:
        raise ValueError("cuda_graph_max_batch must be at least 1 (use enforce_eager to disable)")
    if options.prefill_graph_max_tokens < 0:
        raise ValueError("prefill_graph_max_tokens must be >= 0 (0: prefill steps run eagerly)")
    if arch.num_heads % options.tensor_parallel_size or (
        arch.num_kv_heads % options.tensor_parallel_size
        and options.tensor_parallel_size % arch.num_kv_heads
    ):
        raise ValueError(
            f"tensor_parallel_size={options.tensor_parallel_size} does not divide the model's "
            f"{arch.num_heads} attention heads / {arch.num_kv_heads} KV heads"
        )
    async_scheduling = options.async_scheduling
    if async_scheduling is None:
        async_scheduling = device.type == "cuda"
    num_slots = options.num_kv_slots
    if num_slots is None and device.type != "cuda":
        num_slots = max(options.cpu_kv_cache_tokens, max_model_len)
    if num_slots is not None and num_slots < max_model_len:
        raise ValueError(
            f"the KV pool ({num_slots} tokens) is smaller than max_model_len={max_model_len}: "
            "lower max_model_len or give the pool more tokens"
        )
    return EngineConfig(
        model_dir=model_dir,
        arch=arch,
        dtype=dtype,
        device=device,
        scheduler=SchedulerConfig(
            max_num_seqs=options.max_num_seqs,
            max_num_batched_tokens=batched_tokens,
            max_model_len=max_model_len,
            admission_policy=options.admission_policy,
        ),
        tensor_parallel_size=options.tensor_parallel_size,
        num_kv_slots=num_slots,
        gpu_memory_utilization=options.gpu_memory_utilization,
        attention_backend=_resolve_attention_backend(options.attention_backend, device),
        seed=options.seed,
        enable_prefix_caching=options.enable_prefix_caching,
        fused_kernels=(
            device.type == "cuda" if options.fused_kernels is None else options.fused_kernels
        ),
        skinny_linear=(
            device.type == "cuda" if options.skinny_linear is None else options.skinny_linear
        ),
        pdl=options.pdl and _supports_pdl(device),
        fuse_decode_layers=options.fuse_decode_layers,
        fuse_decode_attention=options.fuse_decode_attention,
        enforce_eager=options.enforce_eager,
        cuda_graph_max_batch=options.cuda_graph_max_batch,
        prefill_graph_max_tokens=options.prefill_graph_max_tokens,
        async_scheduling=async_scheduling,
        kv_cache_dtype=_resolve_kv_cache_dtype(options.kv_cache_dtype, dtype),
    )


_ATTENTION_BACKENDS = ("torch", "triton")
def _supports_pdl(device: torch.device) -> bool:
    """Programmatic dependent launch needs Hopper (sm_90) or later; elsewhere `pdl` is off."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


_KV_CACHE_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}


def _resolve_kv_cache_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    if name == "auto":
        return dtype
    if name not in _KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype must be auto or one of {sorted(_KV_CACHE_DTYPES)}, got {name!r}"
        )
    return _KV_CACHE_DTYPES[name]


def _resolve_attention_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name not in _ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be auto or one of {list(_ATTENTION_BACKENDS)}, got {name!r}"
        )
    return name


def _resolve_dtype(name: str, arch: ModelArchConfig, device: torch.device) -> torch.dtype:
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {name!r}")
        return _DTYPES[name]
    saved = _DTYPES.get(arch.torch_dtype, torch.float32)
    if device.type == "cpu":
        # Half precision matmuls are slow and inexact on CPU; float32 is what tests compare.
        return torch.float32
    return torch.bfloat16 if saved == torch.float32 else saved
