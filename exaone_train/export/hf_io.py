"""Read and write Hugging Face model directories (config.json + safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from exaone_train.errors import CheckpointError

_INDEX = "model.safetensors.index.json"


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def _safetensor_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / _INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (hf_dir / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that do not exist: {missing}")
        return [hf_dir / s for s in shards]
    return sorted(hf_dir.glob("*.safetensors"))


def read_hf_tensors(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF model directory (safetensors, else pytorch_model*.bin)."""
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    files = _safetensor_files(hf_dir)
    tensors: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            tensors.update(load_file(str(f)))
        return tensors
    bins = sorted(hf_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"{hf_dir}: no *.safetensors or pytorch_model*.bin weights")
    for f in bins:
        tensors.update(torch.load(f, map_location="cpu", weights_only=True))
    return tensors


def _shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += nbytes
    return shards


def write_hf_dir(out_dir: str | Path, hf_config: Any, tensors: dict[str, torch.Tensor],
                 architecture: str, max_shard_bytes: int = 5 * 2**30) -> Path:
    """config.json (via the config object's own writer) + safetensors: `model.safetensors`, or
    `model-0000i-of-0000n.safetensors` shards + `model.safetensors.index.json` past
    `max_shard_bytes` (the layout `transformers` writes and reads)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config.architectures = [architecture]
    hf_config.save_pretrained(str(out))
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return out
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / _INDEX).write_text(json.dumps(index, indent=2))
    return out
