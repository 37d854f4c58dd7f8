"""Model weights through megatron-core dist_checkpointing, in the one model format every
checkpoint of ours uses (`model_io.sharded_model_state_dict`: per-layer global keys; VPP
chunks nest as model0, model1, ...): fully reshardable, so weights saved under one
TP/PP/EP/DP layout load under another. `train.init_from` reads a `convert from-hf` output's
`model/` or a training checkpoint's `model/` (whose optimizer tensors are simply not asked
for)."""

from __future__ import annotations

from pathlib import Path

from megatron.core import dist_checkpointing

from exaone_train.checkpoint.sharded import load_model_into, model_state
from exaone_train.errors import CheckpointError


def save_model_state(chunks: list, path: str | Path) -> None:
    """Collective: every rank calls it. `path` must not exist yet (or be empty)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model_state(chunks), str(path))


def load_model_state(chunks: list, path: str | Path) -> None:
    """Load weights under any layout into this rank's chunks."""
    path = Path(path)
    if not (path / "metadata.json").exists():
        raise CheckpointError(f"{path}: not a dist_checkpointing directory (no metadata.json)")
    try:
        state = dist_checkpointing.load(model_state(chunks), str(path))
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: does not match this model: {e}") from e
    load_model_into(chunks, state)
