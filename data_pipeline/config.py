"""Data configuration dataclasses (Hydra structured configs, `MISSING` where the user must give
a value). A data recipe (`recipes/data/*.yaml`) is a `DataRecipeConfig`: a `build` section
(sources -> shards) and named `stages` (blend, packing, sampling), each a `StageDataConfig`
that `build_stage_dataset` turns into a `StageDataset`.

Relative paths are relative to the repository root (see `resolve_path`), so a recipe means
the same files from any working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from exaone_train.errors import ConfigError

SOURCE_FORMATS = ("jsonl", "parquet", "text", "hf_disk", "hf_json", "hf_parquet", "hf_text",
                  "synth")
LONG_DOC_POLICIES = ("error", "split", "route")
DECONTAMINATION_ACTIONS = ("drop", "mark")


@dataclass
class SourceConfig:
    """One input source: a file, a directory or a glob of files of one format.

    format: jsonl | parquet | text (one document per file) | hf_disk (`datasets.load_from_disk`)
    | hf_json / hf_parquet / hf_text (`datasets.load_dataset(<builder>, data_files=path)`)
    | synth (documents generated at build time: `path` names a generator of
    `data_pipeline.synth.GENERATORS`, `synth` holds its arguments; see data_pipeline/synth).
    language: the source's language; `language_field` (a record field) wins per record.
    """

    name: str = MISSING
    path: str = MISSING
    format: str = "jsonl"
    text_field: str = "text"
    language: str | None = None
    language_field: str | None = None
    split: str = "train"  # for hf_* formats
    synth: dict[str, Any] = field(default_factory=dict)  # a synth generator's arguments


@dataclass
class DecontaminationConfig:
    """Benchmark decontamination (data_pipeline/decontam.py): a document sharing an `ngram`-token
    n-gram of normalised text with any evaluation text is dropped (`action: drop`) or kept and
    listed in `<shard>.contaminated.npy` (`action: mark`). Evaluation sets are read like sources
    (`format`, `text_field`, `split`: e.g. `{name: mmlu, path: eval/mmlu.jsonl, text_field:
    question}`)."""

    eval_sets: list[SourceConfig] = field(default_factory=list)
    ngram: int = 13  # words of normalised text (a CJK character is a word: see decontam.py)
    action: str = "drop"


@dataclass
class BuildConfig:
    """`exaone-train data build`: sources -> NFC -> tokenizer -> `.bin/.idx` shards + manifest."""

    sources: list[SourceConfig] = field(default_factory=list)
    tokenizer: str = "data/tokenizer/tokenizer.json"
    output_dir: str = "data/build/shipped"
    nfc: bool = True
    append_eos: bool = True
    eos_token: str = "<eos>"  # its id is looked up in the tokenizer
    # Tokenizer processes; 0 = in-process, the Rust tokenizer's own threads (fastest on 2 cores:
    # bench/RESULTS.md). Processes pay off where parsing, not tokenizing, is the bottleneck.
    num_workers: int = 0
    batch_documents: int = 256  # documents per worker task
    shard_max_tokens: int = 1_000_000_000  # a source's shard rolls over past this many tokens
    max_bad_record_examples: int = 50  # bad records listed (with file and line) in the manifest
    progress: bool = True
    decontaminate: DecontaminationConfig = field(default_factory=DecontaminationConfig)


@dataclass
class BlendComponent:
    """A named share of a stage's samples.

    prefix: a shard prefix (path without .bin/.idx), a source prefix `<build dir>/<source>`
    (all of its numbered shards), or a build directory (every shard in it, or only those of
    `sources` when given).
    """

    name: str = MISSING
    prefix: str = MISSING
    weight: float = MISSING
    sources: list[str] | None = None


@dataclass
class StageDataConfig:
    """How one curriculum stage reads its data.

    long_doc_policy: what happens to a document longer than seq_length + 1 tokens:
      error (DataError naming shard and document), split (into seq_length + 1 pieces, each
      then a document of its own), route (left out of this stage and counted: a longer stage
      reads it whole).
    blend_window_samples: every window of this many consecutive global samples holds each
      component's exact share (largest remainder over the cumulative targets).
    """

    name: str = "stage"
    seq_length: int = MISSING
    blend: list[BlendComponent] = field(default_factory=list)
    long_doc_policy: str = "error"
    reset_position_ids: bool = True
    pad_id: int = 0
    eos_id: int = 2
    blend_window_samples: int = 1000
    shuffle: bool = True
    pack_open_bins: int = 64  # first-fit packing keeps this many partly filled samples open
    # Packed-sample index cache: None = `index-cache/` next to each component's first shard,
    # a path = there, "" = none (built in memory at every start).
    index_cache_dir: str | None = None


@dataclass
class DataRecipeConfig:
    """A data recipe: what to build and the stages that read it."""

    build: BuildConfig = field(default_factory=BuildConfig)
    stages: dict[str, StageDataConfig] = field(default_factory=dict)
    seed: int = 1234


def repo_root() -> Path:
    """`$EXAONE_TRAIN_ROOT`, else the repository this package lives in."""
    env = os.environ.get("EXAONE_TRAIN_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """An absolute path; relative ones are taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def validate_stage(cfg: StageDataConfig, where: str = "stage") -> None:
    """Raise ConfigError naming the field, value and rule for a bad stage config."""
    if cfg.seq_length is MISSING or int(cfg.seq_length) < 2:
        raise ConfigError(f"{where}.seq_length", cfg.seq_length, "must be an integer >= 2")
    if cfg.long_doc_policy not in LONG_DOC_POLICIES:
        raise ConfigError(f"{where}.long_doc_policy", cfg.long_doc_policy,
                          f"must be one of {', '.join(LONG_DOC_POLICIES)}")
    if not cfg.blend:
        raise ConfigError(f"{where}.blend", [], "needs at least one component")
    names = [c.name for c in cfg.blend]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.blend", names, "component names must be unique")
    for i, c in enumerate(cfg.blend):
        if not (float(c.weight) > 0):
            raise ConfigError(f"{where}.blend[{i}].weight", c.weight, "must be > 0")
    total = sum(float(c.weight) for c in cfg.blend)
    smallest = min(float(c.weight) for c in cfg.blend) / total
    if cfg.blend_window_samples * smallest < 1:
        raise ConfigError(f"{where}.blend_window_samples", cfg.blend_window_samples,
                          f"must be >= 1/smallest share ({1 / smallest:.0f}) so every "
                          "component appears in each window")


def validate_build(cfg: BuildConfig, where: str = "build") -> None:
    """Raise ConfigError for a bad build config."""
    if not cfg.sources:
        raise ConfigError(f"{where}.sources", [], "needs at least one source")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.sources", names, "source names must be unique")
    for i, s in enumerate(cfg.sources):
        if s.format not in SOURCE_FORMATS:
            raise ConfigError(f"{where}.sources[{i}].format", s.format,
                              f"must be one of {', '.join(SOURCE_FORMATS)}")
        if not s.name.replace("-", "_").isidentifier():
            raise ConfigError(f"{where}.sources[{i}].name", s.name,
                              "must be letters, digits, '_' or '-' (it names shard files)")
    _validate_decontamination(cfg.decontaminate, f"{where}.decontaminate")


def _validate_decontamination(cfg: DecontaminationConfig, where: str) -> None:
    if cfg.action not in DECONTAMINATION_ACTIONS:
        raise ConfigError(f"{where}.action", cfg.action,
                          f"must be one of {', '.join(DECONTAMINATION_ACTIONS)}")
    if int(cfg.ngram) < 1:
        raise ConfigError(f"{where}.ngram", cfg.ngram, "must be an integer >= 1")
    names = [e.name for e in cfg.eval_sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.eval_sets", names, "evaluation set names must be unique")
    for i, e in enumerate(cfg.eval_sets):
        if e.format not in SOURCE_FORMATS or e.format == "synth":
            raise ConfigError(f"{where}.eval_sets[{i}].format", e.format,
                              f"must be one of {', '.join(SOURCE_FORMATS[:-1])}")
