"""Maps an attention backend name to its class, importing only the one asked for (the Triton
backend imports triton, which the torch backend does not need)."""

from __future__ import annotations

from raylight.engine.attention.backend import AttentionBackend


def make_attention_backend(name: str, pdl: bool = False) -> AttentionBackend:
    """name: a resolved backend name ("torch" or "triton"; config resolves "auto"). pdl: the
    Triton backend's decode kernels use programmatic dependent launch."""
    if name == "torch":
        from raylight.engine.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "triton":
        from raylight.engine.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(pdl=pdl)
    raise ValueError(f"unknown attention backend {name!r} (available: torch, triton)")
