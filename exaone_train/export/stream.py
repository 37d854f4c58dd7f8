"""A model checkpoint (`checkpoint.model_io` format, megatron-core torch_dist) written and read
a tensor at a time, for models that do not fit in host memory.

Write (`save_streaming`): the model is built on the meta device and megatron-core's
`dist_checkpointing.save` runs on its sharded state dict as for any save (factories, sharding
validation, `common.pt`, `metadata.json`), with a save strategy whose torch DCP planner makes
each chunk's data only when DCP's FileSystemWriter reaches it: `produce(state-dict key)` builds
that entry's full tensor (kept for the entry's next chunk: swiglu's gate and up halves are two
chunks of one `linear_fc1.weight`), the chunk is cut from it exactly as megatron's factory cuts
the parameter, written, and dropped. One writer thread writes one `__0_0.distcp` (megatron's
own save splits the same chunks over two threads' files); the DCP metadata (keys, chunks,
dtypes) is the same as a save of the model built in memory, and loads the same way.

Read (`checkpoint_tensors`): the entries of the sharded state dict, loaded in batches of at
most `batch_bytes` (or one entry) through megatron-core's own `dist_checkpointing.load` of that
part of the state dict (into fresh buffers: the meta model holds no memory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from exaone_train.checkpoint import progress
from exaone_train.checkpoint.model_io import MODEL_DIR, sharded_model_state_dict, write_config
from exaone_train.config.schema import RecipeConfig
from exaone_train.errors import CheckpointError

Produce = Callable[[str], torch.Tensor]
Entry = Any  # a megatron-core ShardedTensor or ShardedTensorFactory


def tensor_entries(model: torch.nn.Module) -> dict[str, Entry]:
    """The model's sharded state dict without its `_extra_state` objects: state-dict key ->
    ShardedTensor or factory (data on the model's device, the meta device here)."""
    entries = {}
    for key, entry in sharded_model_state_dict(model).items():
        if isinstance(entry, (ShardedTensor, ShardedTensorFactory)):
            entries[key] = entry
        elif isinstance(entry, dict):  # not in megatron-core 0.16's GPTModel
            raise RuntimeError(f"{key}: nested sharded state dict entries are not supported")
    return entries


def _nbytes(entry: Entry) -> int:
    return entry.data.numel() * entry.data.element_size()


def _chunks(entry: Entry) -> list[ShardedTensor]:
    """What megatron saves of an entry: the factory's ShardedTensors, or the entry itself."""
    if isinstance(entry, ShardedTensorFactory):
        return [s for s in nested_values(entry.build()) if isinstance(s, ShardedTensor)]
    return [entry]


def _chunk_id(chunk: ShardedTensor) -> tuple[str, tuple[int, ...]]:
    return chunk.key, tuple(chunk.global_offset)


class _Chunks:
    """Every chunk of the checkpoint by (DCP key, global offset), cut on demand from the full
    tensor of the state-dict entry that holds it (`produce(entry key)`)."""

    def __init__(self, entries: dict[str, Entry], produce: Produce, bar: Any) -> None:
        self.entries, self.produce, self.bar = entries, produce, bar
        self.owner = {_chunk_id(c): key for key, e in entries.items() for c in _chunks(e)}
        self.last: tuple[str, torch.Tensor] | None = None

    def _full(self, key: str) -> torch.Tensor:
        if self.last is None or self.last[0] != key:
            self.last = None  # free the previous tensor before making the next
            want = self.entries[key].data
            t = self.produce(key)
            if (t.shape, t.dtype) != (want.shape, want.dtype):
                raise RuntimeError(f"{key}: produced {tuple(t.shape)} {t.dtype}, the model "
                                   f"has {tuple(want.shape)} {want.dtype}")
            self.last = (key, t)
        return self.last[1]

    def __call__(self, item: WriteItem) -> torch.Tensor:
        cid = (item.index.fqn, tuple(item.index.offset or ()))
        key = self.owner[cid]
        entry, full = self.entries[key], self._full(key)
        if isinstance(entry, ShardedTensorFactory):
            built = _chunks(dataclasses.replace(entry, data=full))
            full = next(c.data for c in built if _chunk_id(c) == cid)
        assert item.tensor_data is not None
        chunk = full.reshape(item.tensor_data.chunk.sizes)
        if self.bar is not None:
            self.bar.update(chunk.numel() * chunk.element_size())
        return chunk


class _LazyPlanner(MCoreSavePlanner):
    """megatron's torch_dist save planner, with tensor data made when it is written."""

    def __init__(self, chunks: _Chunks) -> None:
        super().__init__(flatten_state_dict=False)
        self.chunks = chunks

    def resolve_data(self, write_item: WriteItem) -> Any:
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        return self.chunks(write_item)


class _LazySaveStrategy(TorchDistSaveShardedStrategy):
    """megatron's torch_dist strategy, saving synchronously through DCP's FileSystemWriter with
    one thread and no copy-ahead, so one tensor is in flight."""

    def __init__(self, chunks: _Chunks) -> None:
        super().__init__("torch_dist", 1)
        self.chunks = chunks

    def save(self, sharded_state_dict: dict, checkpoint_dir: Path) -> None:
        by_key, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, True)
        writer = dcp.FileSystemWriter(str(checkpoint_dir), single_file_per_rank=True,
                                      thread_count=1, per_thread_copy_ahead=0)
        dcp.save(mcore_to_pyt_state_dict(by_key, False), storage_writer=writer,
                 planner=_LazyPlanner(self.chunks))


def save_streaming(model: torch.nn.Module, cfg: RecipeConfig, ckpt_dir: str | Path,
                   produce: Produce, show_progress: bool = False) -> Path:
    """Save a model checkpoint of `model` (built on the meta device, TP=PP=EP=1, one process)
    whose tensors `produce(state-dict key)` makes one at a time."""
    ckpt_dir = Path(ckpt_dir)
    model_dir = ckpt_dir / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    if any(model_dir.iterdir()):
        raise CheckpointError(f"{model_dir} is not empty: refusing to overwrite a checkpoint")
    sharded = sharded_model_state_dict(model)
    entries = tensor_entries(model)
    bar = progress.bar("convert: checkpoint write", sum(map(_nbytes, entries.values())),
                       show_progress)
    strategy = _LazySaveStrategy(_Chunks(entries, produce, bar))
    dist_checkpointing.save(sharded, str(model_dir), sharded_strategy=strategy,
                            async_sharded_save=False)
    if bar is not None:
        bar.close()
    write_config(cfg, ckpt_dir)
    return ckpt_dir


def _load(batch: dict[str, Entry], model_dir: Path) -> dict[str, torch.Tensor]:
    request = {k: dataclasses.replace(e, data=torch.empty(e.data.shape, dtype=e.data.dtype))
               for k, e in batch.items()}
    try:
        loaded = dist_checkpointing.load(request, str(model_dir), validate_access_integrity=False)
    except Exception as e:  # noqa: BLE001 - megatron raises several types; name the checkpoint
        raise CheckpointError(f"{model_dir}: could not read {sorted(batch)[:3]}...: "
                              f"{type(e).__name__}: {e}") from e
    return {k: loaded[k] for k in batch}


def checkpoint_tensors(entries: dict[str, Entry], model_dir: str | Path,
                       batch_bytes: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(state-dict key, full tensor) for every entry, in order, read from the model checkpoint
    at `model_dir` in batches of at most `batch_bytes` (or one entry)."""
    batch: dict[str, Entry] = {}
    size = 0
    for key, entry in entries.items():
        if batch and size + _nbytes(entry) > batch_bytes:
            yield from _load(batch, Path(model_dir)).items()
            batch, size = {}, 0
        batch[key] = entry
        size += _nbytes(entry)
    if batch:
        yield from _load(batch, Path(model_dir)).items()
