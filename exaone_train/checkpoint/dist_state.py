"""Model (and optimizer) state through megatron-core dist_checkpointing: fully reshardable,
tensors matched by global key and offset, so a save under one TP/PP/EP/DP layout loads under
another. Virtual pipeline chunks nest as model0, model1, ... (keys stay global)."""

from __future__ import annotations

from pathlib import Path

from megatron.core import dist_checkpointing

from exaone_train.errors import CheckpointError


def _unwrap(chunk):
    return getattr(chunk, "module", chunk)


def _metadata() -> dict:
    from megatron.core import parallel_state

    # GPTModel needs the DP group when MTP sits on a later pipeline stage than the embedding
    # (it ties its own embedding copy to the first stage's).
    return {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}


def model_sharded_state_dict(chunks: list) -> dict:
    if len(chunks) == 1:
        return {"model": _unwrap(chunks[0]).sharded_state_dict(metadata=_metadata())}
    return {f"model{i}": _unwrap(c).sharded_state_dict(metadata=_metadata())
            for i, c in enumerate(chunks)}


def save_model_state(chunks: list, path: str | Path) -> None:
    """Collective: every rank calls it. `path` must not exist yet (or be empty)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model_sharded_state_dict(chunks), str(path))


def load_model_state(chunks: list, path: str | Path) -> None:
    """Load weights saved by `save_model_state` under any layout into this rank's chunks."""
    path = Path(path)
    if not (path / "metadata.json").exists():
        raise CheckpointError(f"{path}: not a dist_checkpointing directory (no metadata.json)")
    sharded = model_sharded_state_dict(chunks)
    try:
        state = dist_checkpointing.load(sharded, str(path))
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: does not match this model: {e}") from e
    if len(chunks) == 1:
        _unwrap(chunks[0]).load_state_dict(state["model"], strict=True)
    else:
        for i, c in enumerate(chunks):
            _unwrap(c).load_state_dict(state[f"model{i}"], strict=True)
