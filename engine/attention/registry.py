"""Maps an attention backend name to its class, importing only the one asked for (the Triton
backend imports triton, which the torch backend does not need)."""

from __future__ import annotations

from raylight.engine.attention.backend import AttentionBackend


def make_attention_backend(
    name: str, pdl: bool = False, fuse_decode_rope: bool = False
) -> AttentionBackend:
    """name: a resolved backend name ("torch" or "triton"; config resolves "auto"). pdl: the
    Triton backend's decode kernels use programmatic dependent launch; fuse_decode_rope: its
    decode steps take rotary and the KV store into the attention kernel (engine option
    fuse_decode_attention)."""
    if name == "torch":
        from raylight.engine.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "triton":
        from raylight.engine.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(pdl=pdl, fuse_decode_rope=fuse_decode_rope)
    raise ValueError(f"unknown attention backend {name!r} (available: torch, triton)")
