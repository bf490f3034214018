"""The embedded default model: tiny llama, seed 0, float32, generated once per cache dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Bump when the generator's output changes, so stale cached copies are not reused.
GENERATOR_VERSION = 1
DEFAULT_MODEL_NAME = f"tiny-llama-seed0-float32-v{GENERATOR_VERSION}"


def default_cache_dir() -> Path:
    """`$RAYLIGHT_CACHE_DIR/models`, else `~/.cache/raylight/models`."""
    root = os.environ.get("RAYLIGHT_CACHE_DIR")
    if root:
        return Path(root) / "models"
    return Path.home() / ".cache" / "raylight" / "models"


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """Return the default model's directory, generating it on first use.

    The directory is built in a temporary sibling and renamed into place, so it is either
    absent or complete; when two processes race, the loser discards its copy.
    """
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = parent / DEFAULT_MODEL_NAME
    if target.is_dir():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=parent))
    try:
        # Imported here: it pulls in torch, and callers that only need the path stay light.
        from raylight.engine.modelgen.make_model import make_model

        make_model("llama", "tiny", tmp, seed=0, dtype="float32", progress=False)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its complete copy first (ENOTEMPTY/EEXIST).
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
