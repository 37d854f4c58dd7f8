"""Deterministic generators for the shipped corpus (`exaone-train data generate`).

`generate_corpus(out_dir, seed)` writes `data/corpus/*.jsonl` byte-identically for a seed:
six language files of compositional text, thinking-augmented reasoning, long documents with
long-range references, and key/value retrieval samples. The committed files are the output
of `generate_corpus("data/corpus", 1234)`.

`GENERATORS` are the data that is generated at build time instead (a source with
`format: synth`, `path: <generator>`, `synth: {arguments}`): too large to ship, cheap to
generate, deterministic in its arguments (e.g. the dense retrieval practice of the
context-extension stages, `retrieval.generate_dense`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.synth import lexicon, long_docs, multilingual, reasoning, retrieval

DEFAULT_SEED = 1234


@dataclass(frozen=True)
class CorpusSizes:
    """How much of each kind the shipped corpus holds (a few MB in all)."""

    bytes_per_language: int = 300_000
    reasoning_samples: int = 1000
    long_docs: int = 24
    long_doc_min_bytes: int = 3_000
    long_doc_max_bytes: int = 16_000
    retrieval_samples: int = 300
    retrieval_max_pairs: int = 200


GENERATORS = {"dense_retrieval": retrieval.generate_dense, "recall_drill": retrieval.recall_drill}


def synth_records(name: str, args: dict) -> list[dict]:
    """The records of generator `name` called with `args` (lists become tuples)."""
    from exaone_train.errors import ConfigError

    if name not in GENERATORS:
        raise ConfigError("build.sources.path", name, f"a synth source names one of {sorted(GENERATORS)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        return GENERATORS[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"build.sources.synth ({name})", args, str(e)) from None


def synth_fingerprint(name: str, args: dict) -> str:
    """What a synth source's shards depend on: the generator's module sources and arguments."""
    import inspect

    mods = [inspect.getsource(m) for m in (retrieval, multilingual, lexicon)]
    blob = json.dumps([name, args, mods], sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()


def corpus_records(seed: int = DEFAULT_SEED, sizes: CorpusSizes | None = None) -> dict[str, list[dict]]:
    """File stem -> records, for every file of the corpus."""
    s = sizes or CorpusSizes()
    files = {lang: multilingual.generate(lang, seed, s.bytes_per_language)
             for lang in lexicon.LANGUAGES}
    files["reasoning"] = reasoning.generate(seed, s.reasoning_samples)
    files["long_docs"] = long_docs.generate(seed, s.long_docs, s.long_doc_min_bytes,
                                            s.long_doc_max_bytes)
    files["retrieval"] = retrieval.generate(seed, s.retrieval_samples, s.retrieval_max_pairs)
    return files


def write_jsonl(path: Path, records: list[dict]) -> str:
    """Write records one JSON object a line (UTF-8, sorted keys); returns the file's sha256."""
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    blob = data.encode("utf-8")
    path.write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def generate_corpus(out_dir: str | Path, seed: int = DEFAULT_SEED,
                    sizes: CorpusSizes | None = None) -> dict[str, str]:
    """Write every corpus file under `out_dir`; returns {file name: sha256}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {f"{stem}.jsonl": write_jsonl(out / f"{stem}.jsonl", recs)
            for stem, recs in corpus_records(seed, sizes).items()}
