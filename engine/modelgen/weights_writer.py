"""Generate planned tensors one at a time and stream them into safetensors shards.

Peak host memory is one shard plus one tensor (plus one float32 chunk of at most
`_CHUNK_ELEMENTS` while that tensor is drawn), so llama3-70b can be written on a machine with
far less RAM than its 140 GB of weights.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from raylight.engine.modelgen.weight_plan import TensorSpec, assign_shards, shard_file_names

DTYPES: MappingProxyType[str, torch.dtype] = MappingProxyType({
    "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
})
INDEX_FILE = "model.safetensors.index.json"
_CHUNK_ELEMENTS = 1 << 25  # float32 draw buffer: 128 MiB

MakeTensor = Callable[[TensorSpec], torch.Tensor]


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed: a tensor's values depend only on (seed, name, shape, device kind),
    not on the order of generation or the shard layout."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # manual_seed needs < 2**63


def _draw(
    spec: TensorSpec, shape: tuple[int, int], gen: torch.Generator, device: str
) -> torch.Tensor:
    if spec.dist == "normal":
        return torch.randn(shape, generator=gen, device=device).mul_(spec.b).add_(spec.a)
    return torch.rand(shape, generator=gen, device=device).mul_(spec.b - spec.a).add_(spec.a)


def make_tensor(spec: TensorSpec, *, seed: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Draw `spec` on `device` in float32 row chunks and return it on the CPU in `dtype`.

    Deterministic for a given device kind; CPU and CUDA generators give different values.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(tensor_seed(seed, spec.name))
    out = torch.empty(spec.shape, dtype=dtype)
    rows = spec.shape[0]
    out2d = out.view(rows, -1)  # out: [rows, cols]
    step = max(1, _CHUNK_ELEMENTS // out2d.shape[1])  # depends on the shape only
    for r0 in range(0, rows, step):
        chunk = _draw(spec, (min(step, rows - r0), out2d.shape[1]), gen, device)
        out2d[r0 : r0 + chunk.shape[0]].copy_(chunk.to(dtype))
    return out


def _umask_file_mode(out_dir: Path) -> int:
    """Mode a plainly created file gets here (0o666 minus the umask), read without os.umask,
    which would briefly change process-wide state."""
    probe = out_dir / ".mode-probe"
    probe.touch()
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def _write_shard(
    specs: tuple[TensorSpec, ...], path: Path, make: MakeTensor, bar: tqdm, mode: int
) -> None:
    # The dict is local so the shard's tensors are freed as soon as this returns.
    tensors: dict[str, torch.Tensor] = {}
    for spec in specs:
        tensors[spec.name] = make(spec)
        bar.update(tensors[spec.name].nbytes)
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(mode)  # safetensors writes 0o600 via a temp file; match the other files


def write_weights(
    plan: tuple[TensorSpec, ...],
    out_dir: Path,
    make: MakeTensor,
    itemsize: int,
    max_shard_bytes: int,
    progress: bool = True,
) -> tuple[str, ...]:
    """Write `plan` as model.safetensors, or as N shards plus model.safetensors.index.json.

    `make(spec)` must return a CPU tensor of `spec.shape` with `itemsize` bytes per element.
    Returns the weight file names written.
    """
    shards = assign_shards(plan, itemsize, max_shard_bytes)
    names = shard_file_names(len(shards))
    total_bytes = sum(spec.numel for spec in plan) * itemsize
    mode = _umask_file_mode(out_dir)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
              desc="make-model", disable=not progress) as bar:
        for name, specs in zip(names, shards):
            bar.set_postfix_str(name)
            _write_shard(specs, out_dir / name, make, bar, mode)
    if len(names) > 1:
        weight_map = {spec.name: name for name, specs in zip(names, shards) for spec in specs}
        index = {"metadata": {"total_size": total_bytes},
                 "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names
