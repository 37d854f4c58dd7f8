"""Benchmark decontamination by n-gram overlap with evaluation sets (`build.decontaminate`).

As in GPT-3, NeMo Curator's task decontamination and the EXAONE 3.5 report (substring
matching against evaluation sets): a training document that shares one `ngram`-word n-gram
(default 13) of normalised text with an evaluation text is contaminated by that set.

Normalisation (`words`): NFKC, lowercase, every run of characters that are not letters or
digits (punctuation, symbols, whitespace, '_') becomes one space, then whitespace words. Scripts
written without spaces (CJK ideographs, kana) count every character as a word, so 13 Japanese
or Chinese characters are a 13-gram; Hangul keeps its spaces and is split into words like
Latin script.

N-grams are compared as 64-bit hashes (a polynomial over Python's per-process string hash of
each word, computed in numpy): the index is built in the build's parent process and inherited
by forked tokenizer workers, so both sides hash alike. Two different n-grams share a hash with
probability about 2^-64.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.config import DecontaminationConfig
from data_pipeline.sources import Record, iter_records, source_hash

log = logging.getLogger(__name__)
_NOT_WORD = re.compile(r"[\W_]+")
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_MULT = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the polynomial mixes every word


def words(text: str) -> list[str]:
    """Normalised words of a text (see the module docstring)."""
    text = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return _WORD.findall(text)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """uint64 hashes of every n-gram of a text's normalised words (empty if fewer than n)."""
    w = words(text)
    if len(w) < n:
        return np.empty(0, dtype=np.uint64)
    h = np.fromiter((hash(x) for x in w), dtype=np.int64, count=len(w)).view(np.uint64)
    count = len(w) - n + 1
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * _MULT + h[j:j + count]
    return acc


@dataclass
class EvalIndex:
    """The n-gram hashes of each evaluation set, and what the manifest records about them."""

    ngram: int
    action: str
    names: list[str] = field(default_factory=list)
    hashes: list[set[int]] = field(default_factory=list)
    info: dict[str, dict] = field(default_factory=dict)

    def matches(self, text: str) -> list[int]:
        """Indices (into `names`) of the evaluation sets a document shares an n-gram with."""
        grams = ngram_hashes(text, self.ngram).tolist()
        return [i for i, s in enumerate(self.hashes) if not s.isdisjoint(grams)]


def build_index(cfg: DecontaminationConfig) -> EvalIndex | None:
    """Read every evaluation set; None when decontamination is off (no eval sets)."""
    if not cfg.eval_sets:
        return None
    index = EvalIndex(int(cfg.ngram), cfg.action)
    for ev in cfg.eval_sets:
        grams: set[int] = set()
        texts = short = 0
        for rec in iter_records(ev):
            if isinstance(rec, Record):
                texts += 1
                h = ngram_hashes(rec.text, index.ngram)
                short += not len(h)
                grams.update(h.tolist())
        if short:
            log.warning("evaluation set %s: %d of %d texts are shorter than %d words and are not "
                        "checked", ev.name, short, texts, index.ngram)
        index.names.append(ev.name)
        index.hashes.append(grams)
        index.info[ev.name] = {"path": ev.path, "text_field": ev.text_field,
                               "sha256": source_hash(ev), "texts": texts,
                               "texts_shorter_than_ngram": short, "ngrams": len(grams)}
    return index


def index_fingerprint(index: EvalIndex | None) -> str | None:
    """What a build's result depends on in the decontamination settings (for skip/merge keys)."""
    if index is None:
        return None
    h = hashlib.sha256(f"{index.ngram}\0{index.action}\n".encode())
    for name in index.names:
        h.update(f"{name}\0{index.info[name]['sha256']}\0{index.info[name]['text_field']}\n".encode())
    return h.hexdigest()
