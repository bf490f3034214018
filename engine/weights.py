"""Reading the tensors of an HF model directory: one or many `*.safetensors` files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from raylight.engine.errors import ModelDirectoryError

INDEX_FILE = "model.safetensors.index.json"


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files, in index order when an index exists; errors name what is missing."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not weight_map:
            raise ModelDirectoryError(f"{index}: no weight_map")
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelDirectoryError(f"{index} names missing weight files: {', '.join(missing)}")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(model_dir.glob("*.safetensors"))
    if not found:
        raise ModelDirectoryError(f"{model_dir}: no *.safetensors weight files")
    return found


def iter_weights(
    model_dir: Path, device: torch.device, progress: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) for every tensor in the directory, showing bytes read."""
    files = safetensors_files(model_dir)
    total = sum(f.stat().st_size for f in files)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="Loading weights",
        disable=not progress,
        leave=False,
    )
    with bar:
        for path in files:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    bar.update(tensor.numel() * tensor.element_size())
                    yield name, tensor
