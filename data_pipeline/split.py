"""Split a build's inputs over N independent workers (`data build --worker i/N`).

All sources' inputs, in build order (sources in recipe order, each source's files sorted), are
laid end to end by byte size and cut into N equal byte ranges; worker i reads range i. A jsonl
file is divisible: a cut inside it splits it at the cut byte, and each record belongs to the
range holding its first byte (Hadoop's input-split rule), so no record is read twice or lost.
Other files (parquet, text) are read whole by the worker holding their middle byte; a `hf_*`
or `synth` source is one indivisible unit. Every worker computes the same plan from file names
and sizes only (no reading), so the workers' pieces, concatenated in worker order, are each
source's records in the order a 1-worker build reads them.

A worker writes shard numbers in its own block (`shard_block`) so that the shards of a source,
sorted by name, are its token stream in order, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from data_pipeline.config import SourceConfig
from data_pipeline.sources import Piece, source_files
from exaone_train.errors import ConfigError, DataError

MAX_SHARDS = 100_000  # shard names carry a 5-digit number


@dataclass(frozen=True)
class _Unit:
    source: str
    file: str | None
    size: int
    divisible: bool


def parse_worker(spec: str) -> tuple[int, int]:
    """`i/N` -> (i, N), 0 <= i < N."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError("--worker", spec, "must be i/N with integers, e.g. 0/8") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError("--worker", spec, "needs N >= 1 and 0 <= i < N")
    if n > MAX_SHARDS:
        raise ConfigError("--worker", spec, f"at most {MAX_SHARDS} workers (5-digit shard names)")
    return i, n


def _units(sources: list[SourceConfig]) -> list[_Unit]:
    units = []
    for src in sources:
        files = [] if src.format == "synth" else source_files(src)
        if src.format.startswith("hf_") or src.format == "synth":
            units.append(_Unit(src.name, None, sum(f.stat().st_size for f in files), False))
            continue
        units += [_Unit(src.name, str(f), f.stat().st_size, src.format == "jsonl") for f in files]
    return units


def _owner(offset: int, bounds: list[int]) -> int:
    return next(w for w in range(len(bounds) - 1) if offset < bounds[w + 1])


def split_inputs(sources: list[SourceConfig], n: int) -> list[dict[str, list[Piece]]]:
    """For each of `n` workers: {source name: its pieces, in order} (see the module docstring)."""
    units = _units(sources)
    total = sum(u.size for u in units)
    bounds = [w * total // n for w in range(n)] + [max(total, 1)]
    plan: list[dict[str, list[Piece]]] = [{} for _ in range(n)]
    offset = 0
    for u in units:
        if u.divisible and u.size:
            for w in range(n):
                lo, hi = max(offset, bounds[w]), min(offset + u.size, bounds[w + 1])
                if lo < hi:
                    plan[w].setdefault(u.source, []).append(Piece(u.file, lo - offset, hi - offset))
        else:
            w = _owner(min(offset + u.size // 2, bounds[-1] - 1), bounds)
            plan[w].setdefault(u.source, []).append(Piece(u.file))
        offset += u.size
    return plan


def plan_fingerprint(sources: list[SourceConfig], n: int) -> str:
    """sha256 of what the plan is computed from: sources, file names, sizes, mtimes, and N."""
    h = hashlib.sha256(f"{n}\n".encode())
    for src in sources:
        h.update(json.dumps(asdict(src), sort_keys=True, default=str).encode())
        for f in [] if src.format == "synth" else source_files(src):
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def pieces_hash(src: SourceConfig, pieces: list[Piece]) -> str:
    """sha256 over the bytes a worker reads of a source (its skip-if-up-to-date key)."""
    from data_pipeline.sources import source_hash

    h = hashlib.sha256()
    for p in pieces:
        if p.file is None:
            h.update(f"*\0{source_hash(src)}\n".encode())
            continue
        h.update(f"{p.file}\0{p.start}\0{p.end}\0".encode())
        with open(p.file, "rb") as f:
            f.seek(p.start)
            left = None if p.end is None else p.end - p.start
            while left is None or left > 0:
                chunk = f.read(1 << 24 if left is None else min(left, 1 << 24))
                if not chunk:
                    break
                h.update(chunk)
                left = None if left is None else left - len(chunk)
    return h.hexdigest()


def shard_block(i: int, n: int) -> tuple[int, int]:
    """Shard numbers [lo, hi) worker i of n writes for each source (1 worker: all of them)."""
    stride = MAX_SHARDS // n
    return i * stride, MAX_SHARDS if i == n - 1 else (i + 1) * stride


def check_block(source: str, number: int, block: tuple[int, int]) -> None:
    if number >= block[1]:
        raise DataError(f"source {source!r}: this worker's share needs more than "
                        f"{block[1] - block[0]} shards (its block {block[0]}..{block[1] - 1}); "
                        "raise build.shard_max_tokens or use fewer workers")

