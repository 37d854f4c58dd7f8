"""Read documents from a source: jsonl, parquet, text files, Hugging Face `datasets`.

Every format yields `Record`s (text, language, file, line) or `BadRecord`s (file, line,
reason): a bad record is counted and reported by the build, never fatal.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.config import SourceConfig, resolve_path
from data_pipeline.tokenizer import file_sha256
from exaone_train.errors import DataError


@dataclass(frozen=True)
class Record:
    text: str
    language: str
    file: str
    line: int


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int
    reason: str


_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",), "text": (".txt", ".md"),
             "hf_json": (".jsonl", ".json"), "hf_parquet": (".parquet",), "hf_text": (".txt",)}


def source_files(src: SourceConfig) -> list[Path]:
    """The files of a source, sorted: a file, a directory (files with the format's suffix,
    recursively) or a glob. A hf_disk source is its directory's files."""
    p = resolve_path(src.path)
    if any(ch in src.path for ch in "*?["):
        files = [Path(f) for f in sorted(glob.glob(str(p), recursive=True)) if Path(f).is_file()]
    elif p.is_dir():
        suffixes = _SUFFIXES.get(src.format)
        files = sorted(f for f in p.rglob("*") if f.is_file()
                       and (suffixes is None or f.name.endswith(suffixes)))
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise DataError(f"source {src.name!r}: no {src.format} files at {p}")
    return files


def source_hash(src: SourceConfig) -> str:
    """sha256 over the names and contents of a source's files (of a synth source: over its
    generator's code and arguments)."""
    import hashlib

    h = hashlib.sha256()
    if src.format == "synth":
        from data_pipeline.synth import synth_fingerprint

        h.update(synth_fingerprint(src.path, dict(src.synth)).encode())
        return h.hexdigest()
    root = resolve_path(src.path)
    for f in source_files(src):
        rel = f.relative_to(root) if root.is_dir() else Path(f.name)
        h.update(f"{rel}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _check(text: object, lang: object, src: SourceConfig, file: str, line: int) -> Record | BadRecord:
    if text is None:
        return BadRecord(file, line, f"missing field {src.text_field!r}")
    if not isinstance(text, str):
        return BadRecord(file, line, f"field {src.text_field!r} is {type(text).__name__}, not text")
    if not text.strip():
        return BadRecord(file, line, "empty text")
    return Record(text, str(lang or src.language or "unknown"), file, line)


def _line_number_at(f, pos: int) -> int:
    """The 1-based line number of byte `pos` of an open binary file (reads [0, pos))."""
    f.seek(0)
    count, left = 0, pos
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        count, left = count + chunk.count(b"\n"), left - len(chunk)
    return count + 1


def _lines(path: Path, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the lines of a file whose first byte lies in [start, end)."""
    with open(path, "rb") as f:
        line_no = 1
        if start > 0:
            line_no = _line_number_at(f, start - 1)
            f.seek(start - 1)
            f.readline()  # the rest of the line holding byte start-1 belongs to the range before
            line_no += 1
        pos = f.tell()
        while end is None or pos < end:
            raw = f.readline()
            if not raw:
                return
            yield line_no, raw
            pos, line_no = pos + len(raw), line_no + 1


def _jsonl(src: SourceConfig, path: Path, start: int = 0, end: int | None = None
           ) -> Iterator[Record | BadRecord]:
    for line_no, raw in _lines(path, start, end):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield BadRecord(str(path), line_no, f"invalid UTF-8 at byte {e.start}")
            continue
        except json.JSONDecodeError as e:
            yield BadRecord(str(path), line_no, f"invalid JSON: {e.msg}")
            continue
        if not isinstance(obj, dict):
            yield BadRecord(str(path), line_no, "record is not a JSON object")
            continue
        lang = obj.get(src.language_field) if src.language_field else None
        yield _check(obj.get(src.text_field), lang, src, str(path), line_no)


def _text(src: SourceConfig, path: Path) -> Iterator[Record | BadRecord]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        yield BadRecord(str(path), line, f"invalid UTF-8 at byte {e.start}")
        return
    yield _check(text, None, src, str(path), 1)


def _rows(src: SourceConfig, rows: Iterator[dict], file: str) -> Iterator[Record | BadRecord]:
    for i, row in enumerate(rows, start=1):
        lang = row.get(src.language_field) if src.language_field else None
        yield _check(row.get(src.text_field), lang, src, file, i)


def _parquet(src: SourceConfig, path: Path) -> Iterator[Record | BadRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"parquet file {path} could not be read: {e}") from None
    if src.text_field not in table.column_names:
        raise DataError(f"parquet file {path}: no column {src.text_field!r} "
                        f"(columns: {table.column_names})")
    yield from _rows(src, iter(table.to_pylist()), str(path))


def _hf(src: SourceConfig) -> Iterator[Record | BadRecord]:
    import datasets

    path = resolve_path(src.path)
    try:
        if src.format == "hf_disk":
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[src.split]
        else:
            files = [str(f) for f in source_files(src)]
            ds = datasets.load_dataset(src.format.removeprefix("hf_"), data_files=files,
                                       split=src.split)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise DataError(f"source {src.name!r}: datasets could not load {path}: {e}") from None
    if src.text_field not in ds.column_names:
        raise DataError(f"source {src.name!r} ({path}): no column {src.text_field!r} "
                        f"(columns: {ds.column_names})")
    yield from _rows(src, iter(ds), str(path))


@dataclass(frozen=True)
class Piece:
    """The part of a source one build worker reads (data_pipeline/split.py): bytes [start, end)
    of one file (a jsonl record belongs to the piece holding its first byte; other formats are
    read whole), or the whole source when `file` is None."""

    file: str | None
    start: int = 0
    end: int | None = None


def iter_records(src: SourceConfig, pieces: list[Piece] | None = None
                 ) -> Iterator[Record | BadRecord]:
    """Every document of a source (of `pieces` of it), in a fixed order (files sorted, then line
    order): the pieces of all workers, in order, yield exactly the records of the source."""
    if pieces is not None:
        for piece in pieces:
            if piece.file is None:
                yield from iter_records(src)
            elif src.format == "jsonl":
                yield from _jsonl(src, Path(piece.file), piece.start, piece.end)
            else:
                yield from _READERS[src.format](src, Path(piece.file))
        return
    if src.format.startswith("hf_"):
        yield from _hf(src)
        return
    if src.format == "synth":
        from data_pipeline.synth import synth_records

        for i, rec in enumerate(synth_records(src.path, dict(src.synth)), start=1):
            yield _check(rec.get(src.text_field), rec.get(src.language_field or "lang"), src,
                         f"synth:{src.path}", i)
        return
    for path in source_files(src):
        yield from _READERS[src.format](src, path)


_READERS = {"jsonl": _jsonl, "parquet": _parquet, "text": _text}
