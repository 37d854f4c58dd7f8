"""Read and write Hugging Face model directories (config.json + safetensors): in memory
(`read_hf_tensors`, `write_hf_dir`) or a tensor at a time (`HfTensorFiles`, `HfShardWriter`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from exaone_train.errors import CheckpointError

_INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 2**30
_SAFETENSORS_DTYPE = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                      torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
                      torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_TORCH_DTYPE = {name: dtype for dtype, name in _SAFETENSORS_DTYPE.items()}


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


class HfTensorFiles:
    """The tensors of a HF model directory, one at a time: names, shapes and dtypes from the
    safetensors headers (`meta`: meta-device tensors); `load(name)` reads one tensor through
    `safe_open` (memory-mapped), opened for that tensor only: pages of a mapping kept open
    stay resident and count in the RSS, up to the whole model. `pytorch_model*.bin` weights
    are memory-mapped with `torch.load(mmap=True)` (streamed, not bounded like safetensors)."""

    def __init__(self, hf_dir: str | Path) -> None:
        hf_dir = Path(hf_dir)
        self.file_of: dict[str, Path] = {}
        self.meta: dict[str, torch.Tensor] = {}
        self.bin: dict[str, torch.Tensor] = {}
        for f in _safetensor_files(hf_dir):
            self._read_header(f)
        if not self.file_of:
            self._map_bins(hf_dir)

    def _read_header(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key in self.file_of:
                    raise CheckpointError(f"{path}: tensor {key!r} is also in "
                                          f"{self.file_of[key].name}")
                part = f.get_slice(key)
                dtype = _TORCH_DTYPE.get(part.get_dtype())
                if dtype is None:
                    raise CheckpointError(f"{path}: tensor {key!r} has dtype "
                                          f"{part.get_dtype()}, not a floating/integer type")
                self.file_of[key] = path
                self.meta[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")

    def _map_bins(self, hf_dir: Path) -> None:
        bins = sorted(hf_dir.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(f"{hf_dir}: no *.safetensors or pytorch_model*.bin weights")
        for f in bins:
            self.bin.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        self.meta = {k: t.to("meta") for k, t in self.bin.items()}

    def load(self, key: str) -> torch.Tensor:
        if key in self.bin:
            return self.bin[key]
        from safetensors import safe_open

        with safe_open(str(self.file_of[key]), framework="pt") as f:
            return f.get_tensor(key)


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Consecutive names grouped into shards of at most `max_shard_bytes` (or one tensor)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, nbytes in sizes:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _shard_files(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _write_index(out: Path, weight_map: dict[str, str], total_bytes: int) -> None:
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (out / _INDEX).write_text(json.dumps(index, indent=2))


def _write_hf_config(out_dir: str | Path, hf_config: Any, architecture: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config.architectures = [architecture]
    hf_config.save_pretrained(str(out))
    return out


def write_hf_dir(out_dir: str | Path, hf_config: Any, tensors: dict[str, torch.Tensor],
                 architecture: str, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """config.json (via the config object's own writer) + safetensors: `model.safetensors`, or
    `model-0000i-of-0000n.safetensors` shards + `model.safetensors.index.json` past
    `max_shard_bytes` (the layout `transformers` writes and reads). In memory: see
    `HfShardWriter` for the streaming writer."""
    from safetensors.torch import save_file

    out = _write_hf_config(out_dir, hf_config, architecture)
    shards = plan_shards([(k, _nbytes(t)) for k, t in tensors.items()], max_shard_bytes)
    weight_map = {}
    for name, keys in zip(_shard_files(len(shards)), shards, strict=True):
        save_file({k: tensors[k].contiguous() for k in keys}, str(out / name),
                  metadata={"format": "pt"})
        weight_map.update({key: name for key in keys})
    if len(shards) > 1:
        _write_index(out, weight_map, sum(_nbytes(t) for t in tensors.values()))
    return out


# ---------------------------------------------------------------- streaming


def _header(specs: list[tuple[str, torch.Tensor]]) -> bytes:
    """The safetensors header of tensors written in this order (8-byte aligned JSON)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, t in specs:
        if t.dtype not in _SAFETENSORS_DTYPE:
            raise CheckpointError(f"{key}: dtype {t.dtype} has no safetensors name")
        header[key] = {"dtype": _SAFETENSORS_DTYPE[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + _nbytes(t)]}
        offset += _nbytes(t)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class HfShardWriter:
    """A Hugging Face model directory written tensor by tensor, in `write_hf_dir`'s layout.

    `specs` (each name with a tensor of its final shape and dtype, e.g. on the meta device, in
    the order `write` will be called) fixes every shard and header up front, so each tensor
    goes to disk as it is written: memory holds one tensor, not a shard.
    """

    def __init__(self, out_dir: str | Path, hf_config: Any, architecture: str,
                 specs: list[tuple[str, torch.Tensor]], max_shard_bytes: int = MAX_SHARD_BYTES):
        self.out = _write_hf_config(out_dir, hf_config, architecture)
        self.specs = dict(specs)
        shards = plan_shards([(k, _nbytes(t)) for k, t in specs], max_shard_bytes)
        self.files = list(zip(_shard_files(len(shards)), shards, strict=True))
        self.order = [k for _, keys in self.files for k in keys]
        self.starts: dict[int, tuple[str, list[str]]] = {}  # first tensor's index -> shard
        first = 0
        for name, keys in self.files:
            self.starts[first] = (name, keys)
            first += len(keys)
        self.done = 0
        self.stream: Any = None

    def write(self, key: str, tensor: torch.Tensor) -> None:
        planned = self.order[self.done] if self.done < len(self.order) else None
        spec = self.specs.get(key)
        if key != planned or spec is None or (tensor.shape, tensor.dtype) != (spec.shape,
                                                                              spec.dtype):
            raise RuntimeError(f"HfShardWriter: got {key} {tuple(tensor.shape)} {tensor.dtype}, "
                               f"planned {planned}")  # the caller broke its own plan
        if self.done in self.starts:
            self._open(*self.starts[self.done])
        self.stream.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        self.done += 1

    def _open(self, name: str, keys: list[str]) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = open(self.out / name, "wb")
        self.stream.write(_header([(k, self.specs[k]) for k in keys]))

    def close(self) -> Path:
        """Finish the last shard and write the index (sharded output)."""
        if self.stream is not None:
            self.stream.close()
        if self.done != len(self.order):
            raise RuntimeError(f"HfShardWriter: {len(self.order) - self.done} planned tensor(s) "
                               f"never written, e.g. {self.order[self.done]}")
        if len(self.files) > 1:
            _write_index(self.out, {k: name for name, keys in self.files for k in keys},
                         sum(_nbytes(t) for t in self.specs.values()))
        return self.out
