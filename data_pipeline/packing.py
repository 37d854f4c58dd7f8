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

from exaone_train.errors import DataError


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
    """Every document of a component: shard index, document index, length in tokens."""

    shard: np.ndarray
    doc: np.ndarray
    length: np.ndarray
    shard_names: tuple[str, ...]


def pack(table: DocumentTable, order: np.ndarray, seq_length: int, policy: str,
         open_bins: int = 64, where: str = "stage") -> PackedIndex:
    """First-fit packing of `table`'s documents, taken in `order`, into samples (compiled:
    `_pack.c`; the same samples as `pack_reference`, the algorithm's plain statement)."""
    from data_pipeline.native import library

    capacity, split = seq_length + 1, policy == "split"
    order = np.ascontiguousarray(order, dtype=np.int64)
    n = np.ascontiguousarray(table.length, dtype=np.int64)[order]
    long = np.flatnonzero(n > capacity)
    if policy == "error" and len(long):
        _too_long(table, int(order[long[0]]), capacity, where)
    extra = int((-(-n[long] // capacity) - 1).sum()) if split else -len(long)
    n_pieces = len(n) + extra
    rows, start = np.empty(n_pieces, np.int64), np.empty(n_pieces, np.int64)
    length, ptr = np.empty(n_pieces, np.int32), np.empty(n_pieces + 1, np.int64)
    scratch = np.empty((2, max(n_pieces, 1)), np.int64)
    num_samples = library().exaone_pack(n, order, len(n), capacity, int(split), int(open_bins),
                                        scratch[0], scratch[1], rows, start, length, ptr)
    if num_samples < 0:
        raise MemoryError(f"packing {n_pieces} pieces ({where}): out of memory")
    del scratch, n
    shard = np.ascontiguousarray(table.shard, dtype=np.int32)[rows]
    doc = np.asarray(table.doc, dtype=np.int64)[rows]
    del rows
    return PackedIndex(shard, doc, start, length, ptr[:num_samples + 1].copy(),
                       len(long) if policy == "route" else 0, len(long) if split else 0,
                       num_samples * capacity - int(length.sum(dtype=np.int64)))


def _too_long(table: DocumentTable, i: int, capacity: int, where: str) -> None:
    s, d, n = int(table.shard[i]), int(table.doc[i]), int(table.length[i])
    raise DataError(f"{table.shard_names[s]}.bin: document {d} has {n} tokens, more than "
                    f"seq_length + 1 = {capacity} ({where}, long_doc_policy=error; use "
                    "split or route, or a stage with a longer seq_length)")


def _pieces(table: DocumentTable, order: np.ndarray, capacity: int, policy: str, where: str):
    """(shard, doc, start, length) pieces in packing order, plus routed / split counts."""
    routed = split = 0
    out: list[tuple[int, int, int, int]] = []
    for i in order.tolist():
        s, d, n = int(table.shard[i]), int(table.doc[i]), int(table.length[i])
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
