"""`.bin/.idx` shards in megatron-core's `IndexedDataset` format: write, check, open.

Writing goes through megatron-core's `IndexedDatasetBuilder` (one sequence per document;
whole tokenized batches are appended at once). Before a shard is opened its index is checked
against the format and the data file's size, so a truncated or corrupt shard is a `DataError`
that names the file instead of an assert or a read past the end of a memory map.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaone_train.errors import DataError

INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
           7: np.float32, 8: np.uint16}
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8
INDEX_BYTES = _HEADER_BYTES  # + 12 per sequence (length, pointer) + 8 per document index


def token_dtype(vocab_size: int) -> type[np.integer]:
    """The smallest dtype megatron-core uses for a vocabulary (uint16 below 65,500)."""
    return np.uint16 if vocab_size < 65500 else np.int32


@dataclass(frozen=True)
class ShardInfo:
    prefix: str
    dtype: type[np.integer]
    num_sequences: int
    num_documents: int
    num_tokens: int


def _mapped(path: Path, dtype, offset: int, count: int) -> np.ndarray:
    return np.memmap(path, dtype, "r", offset, (count,)) if count else np.zeros(0, dtype)


def check_shard(prefix: str | Path) -> ShardInfo:
    """Validate a shard's .idx against the format and its .bin's size; DataError if broken."""
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for p in (idx, bin_):
        if not p.is_file():
            raise DataError(f"shard file missing: {p}")
    size = idx.stat().st_size
    with open(idx, "rb") as f:
        head = f.read(_HEADER_BYTES)
        if len(head) < _HEADER_BYTES or head[:9] != INDEX_HEADER:
            raise DataError(f"{idx}: not a megatron-core index (bad or truncated header)")
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
        if version != 1 or code not in _DTYPES:
            raise DataError(f"{idx}: unsupported version {version} or dtype code {code}")
        expected = _HEADER_BYTES + n_seq * (4 + 8) + n_doc * 8
        if size not in (expected, expected + n_seq):  # + one mode byte each when multimodal
            raise DataError(f"{idx}: truncated or corrupt: {size} bytes, the header's "
                            f"{n_seq} sequences / {n_doc} documents need {expected}")
    lengths = _mapped(idx, np.int32, _HEADER_BYTES, n_seq)  # mapped, not read: no copy
    docs = _mapped(idx, np.int64, _HEADER_BYTES + n_seq * 12, n_doc)
    if (lengths < 0).any() or n_doc < 1 or docs[0] != 0 or docs[-1] != n_seq or \
            (docs[1:] < docs[:-1]).any():
        raise DataError(f"{idx}: corrupt index (negative lengths or unordered document indices)")
    dtype = _DTYPES[code]
    n_tok = int(lengths.sum(dtype=np.int64))
    if bin_.stat().st_size != n_tok * np.dtype(dtype).itemsize:
        raise DataError(f"{bin_}: truncated or corrupt: {bin_.stat().st_size} bytes, its index "
                        f"{idx.name} needs {n_tok} tokens x {np.dtype(dtype).itemsize} bytes")
    return ShardInfo(str(prefix), dtype, n_seq, n_doc - 1, n_tok)


def open_shard(prefix: str | Path):  # -> megatron.core.datasets.indexed_dataset.IndexedDataset
    """Check, then open a shard with megatron-core's own reader (memory-mapped)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    check_shard(prefix)
    return IndexedDataset(str(prefix), multimodal=False, mmap=True)


class ShardWriter:
    """Append tokenized documents to `<prefix>.bin/.idx` through megatron-core's builder.

    Files are written under a temporary name and renamed on `close()`, so an interrupted build
    never leaves a shard that looks complete.
    """

    def __init__(self, prefix: str | Path, dtype: type[np.integer]) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix, self.dtype = str(prefix), dtype
        self._tmp = f"{self.prefix}.tmp{os.getpid()}"
        self._builder = IndexedDatasetBuilder(f"{self._tmp}.bin", dtype=dtype)
        self.num_documents = 0
        self.num_tokens = 0

    def add_batch(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat token array and their lengths."""
        b = self._builder
        b.data_file.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        b.sequence_lengths.extend(lengths.tolist())
        n0 = len(b.document_indices) - 1
        b.document_indices.extend(range(n0 + 1, n0 + 1 + len(lengths)))
        self.num_documents += len(lengths)
        self.num_tokens += int(lengths.sum())

    def close(self) -> ShardInfo:
        """Write the index and move both files into place."""
        self._builder.finalize(f"{self._tmp}.idx")
        os.replace(f"{self._tmp}.bin", f"{self.prefix}.bin")
        os.replace(f"{self._tmp}.idx", f"{self.prefix}.idx")
        return check_shard(self.prefix)
