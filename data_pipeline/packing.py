"""Pack whole documents into samples of `seq_length + 1` tokens, never cutting one silently.

A sample holds `seq_length + 1` tokens (inputs = tokens[:-1], labels = tokens[1:]), so a
document of up to `seq_length + 1` tokens fits whole. Documents are placed first-fit into a
bounded set of open samples (deterministic, little padding); a document longer than that is
handled by the stage's `long_doc_policy`: error, split into full-length pieces, or route (left
out here and counted, for a longer stage to read whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exaone_train.errors import ConfigError, DataError


@dataclass
class PackedIndex:
    """Samples as lists of pieces (CSR): sample s holds pieces sample_ptr[s]:sample_ptr[s+1];
    a piece is `length` tokens of document `doc` of shard `shard` from token `start`."""

    shard: np.ndarray  # int32 [pieces]
    doc: np.ndarray  # int64 [pieces]
    start: np.ndarray  # int64 [pieces]
    length: np.ndarray  # int32 [pieces]
    sample_ptr: np.ndarray  # int64 [samples + 1]
    routed_documents: int = 0
    split_documents: int = 0
    padding_tokens: int = 0

    @property
    def num_samples(self) -> int:
        return len(self.sample_ptr) - 1


@dataclass(frozen=True)
class DocumentTable:
    """Every document of a component: shard index, document index, length in tokens.

    A table of whole shards (`of_shards`) holds only the lengths and each shard's first row
    (`offsets`): rows are shard-major, so a row's shard and document follow from the offsets
    and no per-document shard/document array is ever built (`shard`, `doc` are None)."""

    shard: np.ndarray | None
    doc: np.ndarray | None
    length: np.ndarray
    shard_names: tuple[str, ...]
    offsets: np.ndarray | None = None  # int64 [shards + 1]: shard s holds rows offsets[s]:offsets[s+1]

    @classmethod
    def of_shards(cls, lengths: list[np.ndarray], shard_names: tuple[str, ...]) -> DocumentTable:
        """The table of whole shards, rows in shard order (one shard's lengths are not copied)."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in lengths])
        length = lengths[0] if len(lengths) == 1 else np.concatenate(lengths)
        return cls(None, None, length, shard_names, offsets)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard int32, document int64) of table rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.offsets is None:
            return (np.asarray(self.shard)[rows].astype(np.int32, copy=False),
                    np.asarray(self.doc)[rows].astype(np.int64, copy=False))
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        return shard.astype(np.int32), rows - self.offsets[shard]


def _lengths32(table: DocumentTable) -> np.ndarray:
    """The table's lengths as the int32 array the compiled packer reads (megatron's dtype)."""
    n = np.asarray(table.length)
    if n.dtype != np.int32:
        if len(n) and (int(n.min()) < 0 or int(n.max()) > np.iinfo(np.int32).max):
            raise DataError(f"document lengths must be in [0, 2**31) tokens, found "
                            f"{int(n.min())}..{int(n.max())} ({table.shard_names[0]}...)")
        n = n.astype(np.int32)
    return np.ascontiguousarray(n)


def pack(table: DocumentTable, order: np.ndarray, seq_length: int, policy: str,
         open_bins: int = 64, where: str = "stage", alloc=None) -> PackedIndex:
    """First-fit packing of `table`'s documents, taken in `order`, into samples (compiled:
    `_pack.c`; the same samples as `pack_reference`, the algorithm's plain statement). The
    per-piece arrays come from `alloc(name, n, dtype)` (default `np.empty`; the index cache
    passes one that maps its files, so the packer writes the cache in place)."""
    from data_pipeline.native import library

    capacity, split = seq_length + 1, policy == "split"
    if capacity > np.iinfo(np.int32).max:
        raise ConfigError(f"{where}.seq_length", seq_length, "must be below 2**31 - 1")
    order = np.ascontiguousarray(order, dtype=np.int64)
    n = _lengths32(table)
    long = np.flatnonzero(n > capacity)  # which documents are long does not depend on order
    if policy == "error" and len(long):
        is_long = np.zeros(len(n), dtype=bool)
        is_long[long] = True
        _too_long(table, int(order[np.argmax(is_long[order])]), capacity, where)
    extra = int((-(-n[long].astype(np.int64) // capacity) - 1).sum()) if split else -len(long)
    n_pieces = len(order) + extra
    offsets = table.offsets if table.offsets is not None else np.array([0, len(n)], np.int64)
    alloc = alloc or (lambda name, n, dtype: np.empty(n, dtype))
    shard, doc = alloc("shard", n_pieces, np.int32), alloc("doc", n_pieces, np.int64)
    start, length = alloc("start", n_pieces, np.int64), alloc("length", n_pieces, np.int32)
    ptr = np.empty(n_pieces + 1, np.int64)
    num_samples = library().exaone_pack(n, order, len(order), np.ascontiguousarray(offsets, np.int64),
                                        len(offsets) - 1, capacity, int(split), int(open_bins),
                                        n_pieces, shard, doc, start, length, ptr)
    if num_samples < 0:
        raise MemoryError(f"packing {n_pieces} pieces ({where}): out of memory")
    if table.offsets is None:  # an explicit table: rows -> its shard and document ids
        shard, doc = table.locate(doc)
    return PackedIndex(shard, doc, start, length, ptr[:num_samples + 1].copy(),
                       len(long) if policy == "route" else 0, len(long) if split else 0,
                       num_samples * capacity - int(length.sum(dtype=np.int64)))


def _too_long(table: DocumentTable, i: int, capacity: int, where: str) -> None:
    (s,), (d,) = table.locate(np.array([i]))
    n = int(table.length[i])
    raise DataError(f"{table.shard_names[s]}.bin: document {d} has {n} tokens, more than "
                    f"seq_length + 1 = {capacity} ({where}, long_doc_policy=error; use "
                    "split or route, or a stage with a longer seq_length)")


def _pieces(table: DocumentTable, order: np.ndarray, capacity: int, policy: str, where: str):
    """(shard, doc, start, length) pieces in packing order, plus routed / split counts."""
    routed = split = 0
    out: list[tuple[int, int, int, int]] = []
    shards, docs = table.locate(order)
    for i, s, d in zip(order.tolist(), shards.tolist(), docs.tolist(), strict=True):
        n = int(table.length[i])
        if n <= capacity:
            out.append((s, d, 0, n))
        elif policy == "error":
            _too_long(table, i, capacity, where)
        elif policy == "route":
            routed += 1
        else:
            split += 1
            out.extend((s, d, a, min(capacity, n - a)) for a in range(0, n, capacity))
    return out, routed, split


def pack_reference(table: DocumentTable, order: np.ndarray, seq_length: int, policy: str,
         open_bins: int = 64, where: str = "stage") -> PackedIndex:
    """The packing algorithm in plain Python (one piece at a time): the statement `pack`'s
    compiled helper is tested against."""
    capacity = seq_length + 1
    pieces, routed, split = _pieces(table, order, capacity, policy, where)
    remaining = np.full(open_bins, -1, dtype=np.int64)  # -1: slot unused
    contents: list[list[int]] = [[] for _ in range(open_bins)]
    samples: list[list[int]] = []

    def close(slot: int) -> None:
        samples.append(contents[slot])
        contents[slot], remaining[slot] = [], -1

    for p, (_, _, _, n) in enumerate(pieces):
        fits = np.flatnonzero(remaining >= n)
        if len(fits):
            slot = int(fits[0])
        else:
            free = np.flatnonzero(remaining < 0)
            slot = int(free[0]) if len(free) else int(np.argmin([c[0] for c in contents]))
            if remaining[slot] >= 0:
                close(slot)  # all slots busy: close the one opened first
            remaining[slot] = capacity
        contents[slot].append(p)
        remaining[slot] -= n
        if remaining[slot] == 0:
            close(slot)
    for slot in sorted((s for s in range(open_bins) if contents[s]), key=lambda s: contents[s][0]):
        close(slot)
    return _index(pieces, samples, capacity, routed, split)


def _index(pieces: list, samples: list[list[int]], capacity: int, routed: int, split: int) -> PackedIndex:
    flat = [p for s in samples for p in s]
    arr = np.array([pieces[p] for p in flat], dtype=np.int64).reshape(-1, 4)
    ptr = np.zeros(len(samples) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(s) for s in samples])
    used = int(arr[:, 3].sum()) if len(arr) else 0
    return PackedIndex(arr[:, 0].astype(np.int32), arr[:, 1], arr[:, 2], arr[:, 3].astype(np.int32),
                       ptr, routed, split, len(samples) * capacity - used)
