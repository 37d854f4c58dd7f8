"""`exaone-train data build`: sources -> NFC -> tokenizer (+EOS) -> `.bin/.idx` shards and
`manifest.json`.

Documents are tokenized in batches by worker processes (each loads the tokenizer once) and
written in source order by the parent through megatron-core's `IndexedDatasetBuilder`. A
source whose files, tokenizer and settings are unchanged since the last build, and whose
shards still check out, is skipped.

`build(cfg, worker=(i, n))` builds worker i's share of the inputs (data_pipeline/split.py) into
shards numbered in its own block and a partial manifest `manifest.worker-<i>-of-<n>.json`;
`data_pipeline.merge.merge` checks and joins the partials. With `build.decontaminate.eval_sets`,
documents sharing an n-gram with an evaluation set are dropped or marked (data_pipeline/decontam.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_pipeline import split
from data_pipeline.config import BuildConfig, SourceConfig, resolve_path, validate_build
from data_pipeline.decontam import EvalIndex, build_index, index_fingerprint
from data_pipeline.shards import ShardWriter, check_shard, token_dtype
from data_pipeline.sources import BadRecord, Piece, Record, iter_records, source_hash
from data_pipeline.split import MAX_SHARDS, check_block, shard_block
from data_pipeline.tokenizer import load, tokenizer_hash
from exaone_train.errors import DataError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = "exaone-train-shards/1"

_worker: dict = {}


def _init_pool_worker(*init_args) -> None:
    # A forked worker inherits the parent's Python signal handlers (e.g. a trainer's
    # SIGTERM-sets-a-flag handler): the pool's terminate() must still stop it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker(*init_args)


def _init_worker(tokenizer_path: str, nfc: bool, eos_id: int | None, dtype: str,
                 index: EvalIndex | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker.update(tok=load(tokenizer_path), nfc=nfc, eos_id=eos_id, dtype=np.dtype(dtype),
                   index=index)


def encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize one batch in a worker: (flat tokens, per-document lengths), EOS appended."""
    w = _worker
    if w["nfc"]:
        texts = [unicodedata.normalize("NFC", t) for t in texts]
    ids = [e.ids for e in w["tok"].encode_batch_fast(texts, add_special_tokens=False)]
    if w["eos_id"] is not None:
        for seq in ids:
            seq.append(w["eos_id"])
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter((t for s in ids for t in s), dtype=w["dtype"], count=int(lengths.sum()))
    return flat, lengths


def _encode_task(task: tuple[list[str], list[str]]) -> tuple:
    """(tokens, lengths, languages, hits): hits[j] lists the evaluation sets document j shares
    an n-gram with; under `action: drop` those documents are left out before tokenizing."""
    texts, langs = task
    index: EvalIndex | None = _worker.get("index")
    if index is None:
        return (*encode_texts(texts), langs, [[]] * len(texts))
    hits = [index.matches(t) for t in texts]
    if index.action == "drop":
        kept = [j for j, h in enumerate(hits) if not h]
        dropped = [h for h in hits if h]
        flat, lengths = encode_texts([texts[j] for j in kept])
        return flat, lengths, [langs[j] for j in kept], dropped
    return (*encode_texts(texts), langs, hits)


class _SourceStats:
    def __init__(self, max_examples: int) -> None:
        self.documents = self.tokens = self.bad = 0
        self.languages: dict[str, dict[str, int]] = {}
        self.examples: list[dict] = []
        self.max_examples = max_examples
        self.contaminated: dict[str, int] = {}

    def bad_record(self, b: BadRecord) -> None:
        self.bad += 1
        if len(self.examples) < self.max_examples:
            self.examples.append({"file": b.file, "line": b.line, "reason": b.reason})
            log.warning("bad record %s:%d: %s", b.file, b.line, b.reason)

    def add(self, lengths: np.ndarray, langs: list[str]) -> None:
        self.documents += len(lengths)
        self.tokens += int(lengths.sum())
        for n, lang in zip(lengths.tolist(), langs, strict=True):
            entry = self.languages.setdefault(lang, {"documents": 0, "tokens": 0})
            entry["documents"] += 1
            entry["tokens"] += n

    def add_hits(self, hits: list[list[int]], names: list[str]) -> None:
        for h in hits:
            for i in h:
                self.contaminated[names[i]] = self.contaminated.get(names[i], 0) + 1


def _tasks(src: SourceConfig, pieces: list[Piece] | None, batch: int, stats: _SourceStats
           ) -> Iterator[tuple[list[str], list[str]]]:
    good = (r for r in iter_records(src, pieces) if isinstance(r, Record) or stats.bad_record(r))
    while chunk := list(islice(good, batch)):
        yield [r.text for r in chunk], [r.language for r in chunk]


def _encoded(tasks: Iterator, cfg: BuildConfig, init_args: tuple) -> Iterator:
    if cfg.num_workers <= 0:
        _init_worker(*init_args)
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
        yield from map(_encode_task, tasks)
        return
    with mp.get_context("fork").Pool(cfg.num_workers, _init_pool_worker, init_args) as pool:
        yield from pool.imap(_encode_task, tasks, chunksize=1)


def _remove_shards(out: Path, name: str, block: tuple[int, int] = (0, MAX_SHARDS)) -> None:
    """Delete a source's shards (and their sidecars) numbered in `block`."""
    for f in out.glob(f"{name}_[0-9][0-9][0-9][0-9][0-9].*"):
        if block[0] <= int(f.name[len(name) + 1:len(name) + 6]) < block[1]:
            f.unlink()


class _Shards:
    """A source's shards, numbered from `block[0]`, rolled over past `max_tokens`; under
    `action: mark` each shard's contaminated document indices go to `<shard>.contaminated.npy`.
    A shard is opened with its first batch, so none is empty (megatron-core cannot map an empty
    .bin): a source or share without documents has no shards."""

    def __init__(self, out: Path, name: str, dtype: type, block: tuple[int, int],
                 max_tokens: int, mark: bool) -> None:
        self.out, self.name, self.dtype, self.block = out, name, dtype, block
        self.max_tokens, self.mark = max_tokens, mark
        self.done: list[dict] = []
        self.writer: ShardWriter | None = None

    def _open(self) -> ShardWriter:
        number = self.block[0] + len(self.done)
        check_block(self.name, number, self.block)
        self.marked: list[int] = []
        return ShardWriter(self.out / f"{self.name}_{number:05d}", self.dtype)

    def add(self, flat: np.ndarray, lengths: np.ndarray, hits: list[list[int]]) -> None:
        if not len(lengths):
            return
        self.writer = self.writer or self._open()
        if self.mark:
            self.marked += [self.writer.num_documents + j for j, h in enumerate(hits) if h]
        self.writer.add_batch(flat, lengths)
        if self.writer.num_tokens >= self.max_tokens:
            self._close()

    def _close(self) -> None:
        assert self.writer is not None
        info, self.writer = self.writer.close(), None
        entry = {"prefix": Path(info.prefix).name, "documents": info.num_documents,
                 "tokens": info.num_tokens}
        if self.mark:
            tmp = Path(f"{info.prefix}.contaminated.tmp{os.getpid()}.npy")
            np.save(tmp, np.asarray(self.marked, dtype=np.int64))
            os.replace(tmp, f"{info.prefix}.contaminated.npy")
            entry["contaminated_documents"] = len(self.marked)
        self.done.append(entry)

    def close(self) -> list[dict]:
        if self.writer is not None:
            self._close()
        return self.done


def _build_source(src: SourceConfig, cfg: BuildConfig, out: Path, init_args: tuple,
                  pieces: list[Piece] | None, block: tuple[int, int]) -> dict:
    _remove_shards(out, src.name, block)
    stats = _SourceStats(cfg.max_bad_record_examples)
    index: EvalIndex | None = init_args[4]
    shards = _Shards(out, src.name, np.dtype(init_args[3]).type, block, cfg.shard_max_tokens,
                     index is not None and index.action == "mark")
    bar = tqdm(desc=f"build {src.name}", unit="doc", disable=not cfg.progress)
    tasks = _tasks(src, pieces, cfg.batch_documents, stats)
    for flat, lengths, langs, hits in _encoded(tasks, cfg, init_args):
        shards.add(flat, lengths, hits)
        stats.add(lengths, langs)
        stats.add_hits(hits, index.names if index else [])
        bar.update(len(lengths))
    bar.close()
    if stats.bad:
        log.warning("source %s: %d bad records skipped (listed in %s)", src.name, stats.bad, MANIFEST)
    entry = {"shards": shards.close(), "documents": stats.documents, "tokens": stats.tokens,
             "languages": stats.languages, "bad_records": stats.bad,
             "bad_record_examples": stats.examples}
    if index is not None:
        entry["decontamination"] = {n: stats.contaminated.get(n, 0) for n in index.names}
    return entry


def _source_key(src: SourceConfig, cfg: BuildConfig, tok_sha: str, decon: str | None,
                pieces: list[Piece] | None) -> dict:
    inputs = source_hash(src) if pieces is None else split.pieces_hash(src, pieces)
    return {"source_hash": inputs, "tokenizer_sha256": tok_sha, "source": asdict(src),
            "nfc": cfg.nfc, "append_eos": cfg.append_eos, "eos_token": cfg.eos_token,
            "shard_max_tokens": cfg.shard_max_tokens, "decontamination": decon}


def _up_to_date(entry: dict | None, key: dict, out: Path) -> bool:
    if not entry or entry.get("key") != key:
        return False
    try:
        infos = [check_shard(out / s["prefix"]) for s in entry["shards"]]
    except DataError:
        return False
    return all(i.num_documents == s["documents"] and i.num_tokens == s["tokens"]
               for i, s in zip(infos, entry["shards"], strict=True))


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e})") from None


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a build directory, or None when there is none."""
    return read_json(resolve_path(out_dir) / MANIFEST)


def source_totals(sources: dict) -> dict:
    langs: dict[str, dict[str, int]] = {}
    for entry in sources.values():
        for lang, c in entry["languages"].items():
            t = langs.setdefault(lang, {"documents": 0, "tokens": 0})
            t["documents"] += c["documents"]
            t["tokens"] += c["tokens"]
    return {"documents": sum(e["documents"] for e in sources.values()),
            "tokens": sum(e["tokens"] for e in sources.values()),
            "bad_records": sum(e["bad_records"] for e in sources.values()),
            "languages": dict(sorted(langs.items()))}


def partial_name(i: int, n: int) -> str:
    """The partial manifest worker i of n writes."""
    return f"manifest.worker-{i:05d}-of-{n:05d}.json"


def _remove_stale_partials(out: Path, n: int | None) -> None:
    """Partial manifests of another worker count (of any, for a 1-worker build `n=None`): this
    build rewrites the shard blocks they describe."""
    for p in out.glob("manifest.worker-[0-9]*-of-[0-9]*.json"):
        count = p.name.removesuffix(".json").rsplit("-of-", 1)[1]
        if count.isdigit() and int(count) != n:
            log.warning("removing %s: a build of %d workers, this one has %s", p.name, int(count),
                        n or 1)
            p.unlink()


def write_json(path: Path, obj: dict) -> None:
    """Write a manifest atomically (temporary file, then rename)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_identity(cfg: BuildConfig) -> tuple[dict, EvalIndex | None, str]:
    """(tokenizer entry of the manifest, evaluation index, settings sha256): what every worker
    of a build must share; `data merge` recomputes it from the recipe."""
    tok_path = resolve_path(cfg.tokenizer)
    tok = load(tok_path)
    eos_id = tok.token_to_id(cfg.eos_token) if cfg.append_eos else None
    if cfg.append_eos and eos_id is None:
        raise DataError(f"tokenizer {tok_path} has no token {cfg.eos_token!r} (build.eos_token)")
    tokenizer = {"path": str(tok_path), "sha256": tokenizer_hash(tok_path),
                 "vocab_size": tok.get_vocab_size(), "eos_id": eos_id}
    index = build_index(cfg.decontaminate)
    settings = {"sources": [asdict(s) for s in cfg.sources], "nfc": cfg.nfc,
                "append_eos": cfg.append_eos, "eos_token": cfg.eos_token,
                "shard_max_tokens": cfg.shard_max_tokens, "decontamination": index_fingerprint(index)}
    return tokenizer, index, hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def decontamination_summary(index: EvalIndex | None, sources: dict) -> dict | None:
    """The manifest's `decontamination`: settings, and documents each evaluation set removed
    (or marked) over all sources."""
    if index is None:
        return None
    counted = "documents_removed" if index.action == "drop" else "documents_marked"
    return {"ngram": index.ngram, "action": index.action,
            "eval_sets": {n: {**index.info[n], counted: sum(
                e.get("decontamination", {}).get(n, 0) for e in sources.values())}
                for n in index.names}}


def build(cfg: BuildConfig, worker: tuple[int, int] | None = None) -> dict:
    """Build (or bring up to date) every source's shards; returns the manifest written. With
    `worker=(i, n)`: only worker i's share, into `partial_name(i, n)`."""
    validate_build(cfg)
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, index, settings_sha = build_identity(cfg)
    dtype = np.dtype(token_dtype(tokenizer["vocab_size"]))
    init_args = (tokenizer["path"], cfg.nfc, tokenizer["eos_id"], dtype.name, index)
    i, n = worker or (0, 1)
    plan = split.split_inputs(cfg.sources, n)[i] if worker else None
    path = out / (partial_name(i, n) if worker else MANIFEST)
    _remove_stale_partials(out, n if worker else None)
    old = (read_json(path) or {}).get("sources", {})
    sources, t0 = {}, time.time()
    decon = index_fingerprint(index)
    for src in cfg.sources:
        pieces = None if plan is None else plan.get(src.name, [])
        key = _source_key(src, cfg, tokenizer["sha256"], decon, pieces)
        if _up_to_date(old.get(src.name), key, out):
            log.info("source %s: up to date, skipped", src.name)
            sources[src.name] = {**old[src.name], "skipped": True}
            continue
        entry = _build_source(src, cfg, out, init_args, pieces, shard_block(i, n))
        sources[src.name] = {"key": key, **entry, "skipped": False}
    manifest = {"format": FORMAT, "dtype": dtype.name, "tokenizer": tokenizer,
                "sources": sources, "totals": source_totals(sources),
                "decontamination": decontamination_summary(index, sources),
                "build_seconds": round(time.time() - t0, 3)}
    if worker:
        manifest.update(worker={"index": i, "count": n}, settings_sha256=settings_sha,
                        plan_sha256=split.plan_fingerprint(cfg.sources, n))
    write_json(path, manifest)
    return manifest
