"""Maps an attention backend name to its class, importing only the one asked for (the Triton
backend imports triton, which the torch backend does not need)."""

from __future__ import annotations

from raylight.engine.attention.backend import AttentionBackend


def make_attention_backend(name: str) -> AttentionBackend:
    """name: a resolved backend name ("torch" or "triton"; config resolves "auto")."""
    if name == "torch":
        from raylight.engine.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "triton":
        from raylight.engine.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r} (available: torch, triton)")
