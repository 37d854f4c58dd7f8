"""A model checkpoint (`checkpoint.model_checkpoint` format, megatron-core torch_dist) written and
read a tensor at a time, for models that do not fit in host memory.

Write (`save_streaming`): the model is built on the meta device and megatron-core's
`dist_checkpointing.save` runs on its sharded state dict as for any save (factories, sharding
validation, `common.pt`, `metadata.json`), with a save strategy whose torch DCP planner makes
each chunk's data only when DCP's FileSystemWriter reaches it: `produce(state-dict key)` builds
that entry's full tensor (kept for the entry's next chunk: swiglu's gate and up halves are two
chunks of one `linear_fc1.weight`), the chunk is cut from it exactly as megatron's factory cuts
the parameter, written, and dropped. One writer thread writes one `__0_0.distcp` (megatron's
own save splits the same chunks over two threads' files); the DCP metadata (keys, chunks,
dtypes) is the same as a save of the model built in memory, and loads the same way.

Read (`checkpoint_tensors`): one entry of the sharded state dict at a time, each of its
chunks read by torch DCP straight into its place in the entry's full tensor (the chunks are
cut as for the save: views of the tensor). megatron-core's own load cannot read a part of a
grouped-experts tensor on one rank, and would read a layer's experts at once.
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
from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
    CachedMetadataFileSystemReader,
)
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from exaone_train.checkpoint import progress
from exaone_train.checkpoint.model_checkpoint import (
    MODEL_DIR,
    sharded_model_state_dict,
    write_config,
)
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
        self.written: torch.Tensor | None = None

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
        self._free_written()
        chunk = full.reshape(item.tensor_data.chunk.sizes).clone()
        if self.bar is not None:
            self.bar.update(chunk.numel() * chunk.element_size())
        self.written = chunk
        return chunk

    def _free_written(self) -> None:
        """Free the previous chunk's memory: it has been written (one writer thread, no
        copy-ahead: DCP resolves the next item only after writing the last), but torch DCP's
        FileSystemWriter keeps every tensor of a file in a dict (`tensor_dict`, used only
        for its safetensors format) until the file is done: the whole checkpoint but for
        the chunks of one key that overwrite each other. So every chunk is our own copy,
        whose storage is emptied here (bench/RESULTS.md, HF conversion memory)."""
        if self.written is not None:
            self.written.untyped_storage().resize_(0)
            self.written = None


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


class _ChunkLoadPlanner(DefaultLoadPlanner):
    """Reads exactly the given chunks (DCP key, global offset -> destination tensor) and
    nothing else: megatron's own load of a part of a tensor with a prepended axis (one
    expert of a layer's grouped experts) needs every chunk of it on one rank."""

    def __init__(self, targets: dict[tuple[str, tuple[int, ...]], torch.Tensor]) -> None:
        super().__init__()
        self.targets = targets

    def create_local_plan(self) -> LoadPlan:
        items = []
        assert self.metadata is not None
        for (fqn, offset), dest in self.targets.items():
            md = self.metadata.state_dict_metadata.get(fqn)
            if not isinstance(md, TensorStorageMetadata):
                raise CheckpointError(f"checkpoint has no tensor {fqn!r} (not this model's?)")
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=dest.shape)
            items += create_read_items_for_chunk_list(fqn, md, [chunk])
        return LoadPlan(items)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        index = read_item.dest_index
        dest = self.targets[(index.fqn, tuple(index.offset or ()))]
        return narrow_tensor_by_index(dest, read_item.dest_offsets, read_item.lengths)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass  # DCP copied the data into resolve_tensor's view of the destination


def _read_entry(entry: Entry, reader: Any) -> torch.Tensor:
    """The entry's full tensor: each of its chunks (as megatron saves them) read straight
    into its place (the chunks are views of the tensor, as when megatron cuts them)."""
    full = torch.empty(entry.data.shape, dtype=entry.data.dtype)
    targets = {}
    for c in _chunks(dataclasses.replace(entry, data=full)):
        assert c.data.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
        targets[_chunk_id(c)] = c.data.view((1,) * c.prepend_axis_num + tuple(c.local_shape))
    try:
        dcp.load({}, storage_reader=reader, planner=_ChunkLoadPlanner(targets), no_dist=True)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - DCP wraps I/O and format errors in several types
        raise CheckpointError(f"{reader.path}: could not read {sorted(targets)[0][0]}: "
                              f"{type(e).__name__}: {e}") from e
    return full


def checkpoint_tensors(entries: dict[str, Entry],
                       model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(state-dict key, full tensor) for every entry, in order, read one at a time from the
    model checkpoint at `model_dir` (its DCP metadata read once)."""
    reader = CachedMetadataFileSystemReader(str(model_dir))
    for key, entry in entries.items():
        yield key, _read_entry(entry, reader)
