"""`make_model`: write a random-weight HF model directory (config, tokenizer, safetensors)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from raylight.engine.modelgen.archs import get_arch, hf_config
from raylight.engine.modelgen.presets import get_preset
from raylight.engine.modelgen.tokenizer import (
    build_tokenizer,
    special_token_id,
    write_tokenizer_files,
)
from raylight.engine.modelgen.tokenizer_styles import TOKENIZER_STYLES
from raylight.engine.modelgen.weight_plan import plan_tensors
from raylight.engine.modelgen.weights_writer import DTYPES, INDEX_FILE, make_tensor, write_weights

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


def _installed_transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def _remove_stale_weights(out_dir: Path) -> None:
    # A previous write with another shard count would otherwise leave files that HF or the
    # engine might pick up next to the new ones (save_pretrained cleans up the same way).
    for path in (*out_dir.glob("model-*-of-*.safetensors"), out_dir / "model.safetensors",
                 out_dir / INDEX_FILE):
        path.unlink(missing_ok=True)


def make_model(
    arch: str | None,
    preset: str,
    out_dir: str | Path,
    seed: int = 0,
    dtype: str = "bfloat16",
    device: str = "cpu",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
) -> Path:
    """Write an HF-format model directory with random weights and a locally trained tokenizer.

    `arch` is "llama", "mistral", "qwen2" or "qwen3"; None takes the preset's default.
    The same (arch, preset, seed, dtype, device kind) gives byte-identical files.
    Returns `out_dir` as a Path.
    """
    shape = get_preset(preset)
    spec = get_arch(arch or shape.default_arch)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    if max_shard_bytes <= 0:
        raise ValueError("max_shard_bytes must be positive")
    style = TOKENIZER_STYLES[spec.tokenizer_style]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer(style, shape.bpe_vocab_size, shape.vocab_size)
    write_tokenizer_files(tok, style, out, shape.max_position_embeddings)
    bos_id = special_token_id(tok, style.config_bos_token)
    eos_ids = [special_token_id(tok, t) for t in style.stop_tokens]
    config = hf_config(
        spec, shape, dtype, bos_id, eos_ids, transformers_version=_installed_transformers_version()
    )
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids,
        "pad_token_id": special_token_id(tok, style.pad_token),
    })

    _remove_stale_weights(out)
    torch_dtype = DTYPES[dtype]
    make = functools.partial(make_tensor, seed=seed, dtype=torch_dtype, device=device)
    write_weights(
        plan_tensors(spec, shape), out, make, torch_dtype.itemsize, max_shard_bytes, progress
    )
    return out
