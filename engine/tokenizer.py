"""Loading a model directory's tokenizer (used by the offline API and by the server's ingress;
the engine loop itself only sees token ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylight.engine.errors import ModelDirectoryError


def load_tokenizer(model_dir: str | Path) -> Any:
    """The fast tokenizer from `tokenizer.json` + `tokenizer_config.json` (chat template, special
    tokens). Loaded directly rather than through AutoTokenizer, which imports model configs and
    costs a second or more."""
    from transformers import PreTrainedTokenizerFast

    path = Path(model_dir)
    if not (path / "tokenizer.json").is_file():
        raise ModelDirectoryError(f"{path}: no tokenizer.json (raylight needs a fast tokenizer)")
    return PreTrainedTokenizerFast.from_pretrained(str(path))
