"""`exaone-train data build`: sources -> NFC -> tokenizer (+EOS) -> `.bin/.idx` shards and
`manifest.json`.

Documents are tokenized in batches by worker processes (each loads the tokenizer once) and
written in source order by the parent through megatron-core's `IndexedDatasetBuilder`. A
source whose files, tokenizer and settings are unchanged since the last build, and whose
shards still check out, is skipped.
"""

from __future__ import annotations

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

from data_pipeline.config import BuildConfig, SourceConfig, resolve_path, validate_build
from data_pipeline.shards import ShardWriter, check_shard, token_dtype
from data_pipeline.sources import BadRecord, Record, iter_records, source_hash
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


def _init_worker(tokenizer_path: str, nfc: bool, eos_id: int | None, dtype: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker.update(tok=load(tokenizer_path), nfc=nfc, eos_id=eos_id, dtype=np.dtype(dtype))


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


def _encode_task(task: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    texts, langs = task
    return (*encode_texts(texts), langs)


class _SourceStats:
    def __init__(self, max_examples: int) -> None:
        self.documents = self.tokens = self.bad = 0
        self.languages: dict[str, dict[str, int]] = {}
        self.examples: list[dict] = []
        self.max_examples = max_examples

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


def _tasks(src: SourceConfig, batch: int, stats: _SourceStats) -> Iterator[tuple[list[str], list[str]]]:
    good = (r for r in iter_records(src) if isinstance(r, Record) or stats.bad_record(r))
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


def _remove_shards(out: Path, name: str) -> None:
    for f in out.glob(f"{name}_[0-9][0-9][0-9][0-9][0-9].*"):
        f.unlink()


def _build_source(src: SourceConfig, cfg: BuildConfig, out: Path, init_args: tuple) -> dict:
    _remove_shards(out, src.name)
    stats, shards = _SourceStats(cfg.max_bad_record_examples), []
    dtype = np.dtype(init_args[3]).type
    writer = ShardWriter(out / f"{src.name}_{0:05d}", dtype)
    bar = tqdm(desc=f"build {src.name}", unit="doc", disable=not cfg.progress)
    for flat, lengths, langs in _encoded(_tasks(src, cfg.batch_documents, stats), cfg, init_args):
        writer.add_batch(flat, lengths)
        stats.add(lengths, langs)
        bar.update(len(lengths))
        if writer.num_tokens >= cfg.shard_max_tokens:
            shards.append(writer.close())
            writer = ShardWriter(out / f"{src.name}_{len(shards):05d}", dtype)
    bar.close()
    shards.append(writer.close())
    if stats.bad:
        log.warning("source %s: %d bad records skipped (listed in %s)", src.name, stats.bad, MANIFEST)
    return {"shards": [{"prefix": Path(s.prefix).name, "documents": s.num_documents,
                        "tokens": s.num_tokens} for s in shards],
            "documents": stats.documents, "tokens": stats.tokens, "languages": stats.languages,
            "bad_records": stats.bad, "bad_record_examples": stats.examples}


def _source_key(src: SourceConfig, cfg: BuildConfig, tok_sha: str) -> dict:
    return {"source_hash": source_hash(src), "tokenizer_sha256": tok_sha, "source": asdict(src),
            "nfc": cfg.nfc, "append_eos": cfg.append_eos, "eos_token": cfg.eos_token,
            "shard_max_tokens": cfg.shard_max_tokens}


def _up_to_date(entry: dict | None, key: dict, out: Path) -> bool:
    if not entry or entry.get("key") != key:
        return False
    try:
        infos = [check_shard(out / s["prefix"]) for s in entry["shards"]]
    except DataError:
        return False
    return all(i.num_documents == s["documents"] and i.num_tokens == s["tokens"]
               for i, s in zip(infos, entry["shards"], strict=True))


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a build directory, or None when there is none."""
    path = resolve_path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e})") from None


def _totals(sources: dict) -> dict:
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


def build(cfg: BuildConfig) -> dict:
    """Build (or bring up to date) every source's shards; returns the manifest written."""
    validate_build(cfg)
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = resolve_path(cfg.tokenizer)
    tok = load(tok_path)
    eos_id = tok.token_to_id(cfg.eos_token) if cfg.append_eos else None
    if cfg.append_eos and eos_id is None:
        raise DataError(f"tokenizer {tok_path} has no token {cfg.eos_token!r} (build.eos_token)")
    tok_sha, dtype = tokenizer_hash(tok_path), token_dtype(tok.get_vocab_size())
    init_args = (str(tok_path), cfg.nfc, eos_id, np.dtype(dtype).name)
    old = (read_manifest(out) or {}).get("sources", {})
    sources, t0 = {}, time.time()
    for src in cfg.sources:
        key = _source_key(src, cfg, tok_sha)
        if _up_to_date(old.get(src.name), key, out):
            log.info("source %s: up to date, skipped", src.name)
            sources[src.name] = {**old[src.name], "skipped": True}
            continue
        sources[src.name] = {"key": key, **_build_source(src, cfg, out, init_args), "skipped": False}
    manifest = {"format": FORMAT, "dtype": np.dtype(dtype).name,
                "tokenizer": {"path": str(tok_path), "sha256": tok_sha,
                              "vocab_size": tok.get_vocab_size(), "eos_id": eos_id},
                "sources": sources, "totals": _totals(sources),
                "build_seconds": round(time.time() - t0, 3)}
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest
