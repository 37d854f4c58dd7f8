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


def write_hf_dir(out_dir: str | Path, hf_config: Any, tensors: dict[str, torch.Tensor],
                 architecture: str) -> Path:
    """config.json (via the config object's own writer) + model.safetensors."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config.architectures = [architecture]
    hf_config.save_pretrained(str(out))
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out
