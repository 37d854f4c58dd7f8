"""Model weights through megatron-core dist_checkpointing, in the one model format every
checkpoint of ours uses (`model_checkpoint.sharded_model_state_dict`: per-layer global keys; VPP
chunks nest as model0, model1, ...): fully reshardable, so weights saved under one
TP/PP/EP/DP layout load under another. `train.init_from` reads a `convert from-hf` output's
`model/` or a training checkpoint's `model/` (whose optimizer tensors are simply not asked
for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron.core import dist_checkpointing
from torch.distributed.checkpoint.api import CheckpointException

from exaone_train.checkpoint.model_checkpoint import sharded_model_state_dict
from exaone_train.errors import CheckpointError
from exaone_train.parallel import ranks


def unwrap(chunk: Any) -> Any:
    return getattr(chunk, "module", chunk)


def model_state(chunks: list) -> dict:
    """One chunk: the model's state dict at the root (model_checkpoint's layout); VPP:
    model0, model1, ..."""
    if len(chunks) == 1:
        return sharded_model_state_dict(unwrap(chunks[0]))
    return {f"model{i}": sharded_model_state_dict(unwrap(c)) for i, c in enumerate(chunks)}


def load_model_into(chunks: list, loaded: dict) -> None:
    if len(chunks) == 1:
        unwrap(chunks[0]).load_state_dict({k: v for k, v in loaded.items() if k != "optimizer"},
                                          strict=True)
        return
    for i, c in enumerate(chunks):
        unwrap(c).load_state_dict(loaded[f"model{i}"], strict=True)


def save_model_state(chunks: list, path: str | Path) -> None:
    """Collective: every rank calls it. `path` must not exist yet (or be empty)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model_state(chunks), str(path))


def load_model_state(chunks: list, path: str | Path) -> None:
    """Load weights under any layout into this rank's chunks (`train.init_from`, NIAH): the
    same check as a resume's first (`check_compatible`), so weights of another model are a
    CheckpointError naming the keys and shapes."""
    path = Path(path)
    check_compatible(chunks, path)
    try:
        state = dist_checkpointing.load(model_state(chunks), str(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP's is a BaseException
        raise CheckpointError(f"{path}: could not be loaded: {type(e).__name__}: "
                              f"{str(e)[:2000]}") from None
    load_model_into(chunks, state)


def _keys_of_all_ranks(keys) -> set[str]:
    """The union of every rank's `keys` (collective when torch.distributed is initialized)."""
    import torch.distributed as dist

    if ranks.world_size() == 1:
        return set(keys)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, sorted(keys))
    return set().union(*everyone)


def check_compatible(chunks: list, model_dir: Path, limit: int = 8) -> None:
    """CheckpointError naming the first mismatched keys and shapes when the checkpoint in
    `model_dir` is of another model (compares global shapes, layout-free). Collective: every
    rank calls it (keys no rank's model has are the unused ones)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    if not (model_dir / "metadata.json").is_file():
        inner = model_dir / "model"
        hint = f" (did you mean {inner}?)" if (inner / "metadata.json").is_file() else ""
        raise CheckpointError(f"{model_dir}: no dist_checkpointing metadata.json{hint}")
    saved = dist_checkpointing.load_tensors_metadata(str(model_dir))
    want = {}
    for v in nested_values(model_state(chunks)):
        for t in (nested_values(v.build()) if isinstance(v, ShardedTensorFactory) else [v]):
            if isinstance(t, ShardedTensor):
                want[t.key] = tuple(t.global_shape)
    missing = [k for k in want if k not in saved]
    shapes = [f"{k}: checkpoint {tuple(saved[k].global_shape)} vs model {want[k]}"
              for k in want if k in saved and tuple(saved[k].global_shape) != want[k]]
    everywhere = _keys_of_all_ranks(want)  # under PP a rank holds only its stage's layers
    extra = [k for k in saved if not k.startswith("optimizer.") and k not in everywhere]
    if missing or shapes or extra:
        parts = []
        if shapes:
            parts.append(f"shape mismatches: {shapes[:limit]}")
        if missing:
            parts.append(f"{len(missing)} keys missing from the checkpoint, first: "
                         f"{missing[:limit]}")
        if extra:
            parts.append(f"{len(extra)} keys the model does not have, first: {extra[:limit]}")
        raise CheckpointError(f"{model_dir}: checkpoint of another model: " + "; ".join(parts))

