"""`data build --worker i/N` + `data merge`: 3 workers give the 1-worker build's token stream per
source (and its counts); a missing, duplicated or foreign partial is a DataError naming it and
nothing is written. The split reads every record exactly once for any N."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from data_pipeline.build import build, read_manifest
from data_pipeline.config import BlendComponent, BuildConfig, SourceConfig
from data_pipeline.dataset import resolve_shards
from data_pipeline.merge import merge
from data_pipeline.shards import open_shard
from data_pipeline.sources import iter_records
from data_pipeline.split import parse_worker, split_inputs
from exaone_train.errors import ConfigError, DataError
from launcher.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = str(ROOT / "data" / "tokenizer" / "tokenizer.json")
CORPUS = ROOT / "data" / "corpus"


def _lines(name: str, n: int) -> list[str]:
    return (CORPUS / name).read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Shipped-corpus subsets: a jsonl file with bad records, a directory of two jsonl files,
    parquet, text files; and an evaluation set whose text is planted in two documents."""
    d = tmp_path_factory.mktemp("corpus")
    ko = _lines("ko.jsonl", 80)
    ko[17], ko[41] = "{not json", json.dumps({"text": "   "})
    (d / "ko.jsonl").write_text("\n".join(ko) + "\n", encoding="utf-8")
    (d / "web").mkdir()
    planted = "The quick silver fox reads thirteen careful words about benchmark leaks in the corpus today"
    en = [json.loads(x) for x in _lines("en.jsonl", 50)]
    en[7]["text"] += " " + planted.upper() + "!"
    (d / "web" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in en), encoding="utf-8")
    ja = _lines("ja.jsonl", 40)
    (d / "web" / "b.jsonl").write_text("\n".join(ja) + "\n", encoding="utf-8")
    de = [json.loads(x)["text"] for x in _lines("de.jsonl", 30)]
    pq.write_table(pa.table({"text": de}), d / "de.parquet")
    (d / "txt").mkdir()
    for i, t in enumerate(["Ein kurzer Text.", "Un texto corto.", "Một văn bản ngắn."]):
        (d / "txt" / f"{i}.txt").write_text(t, encoding="utf-8")
    (d / "eval.jsonl").write_text(json.dumps({"q": planted}, ensure_ascii=False) + "\n")
    sources = [{"name": "ko", "path": str(d / "ko.jsonl"), "language": "ko"},
               {"name": "web", "path": str(d / "web"), "language_field": "lang"},
               {"name": "de", "path": str(d / "de.parquet"), "format": "parquet", "language": "de"},
               {"name": "txt", "path": str(d / "txt"), "format": "text", "language": "xx"}]
    return d, sources


def _recipe(d: Path, sources: list[dict]) -> Path:
    path = d / "recipe.yaml"
    build_cfg = {"tokenizer": TOKENIZER, "output_dir": str(d / "one"), "sources": sources,
                 "shard_max_tokens": 3000, "progress": False,
                 "decontaminate": {"eval_sets": [{"name": "planted", "path": str(d / "eval.jsonl"),
                                                  "text_field": "q"}]}}
    path.write_text(yaml.safe_dump({"defaults": ["data_recipe_schema", "_self_"],
                                    "build": build_cfg}, allow_unicode=True))
    return path


def _stream(out: Path, manifest: dict, name: str) -> tuple[list[int], np.ndarray]:
    """(document lengths, all tokens) of a source, its shards in manifest order."""
    lengths, tokens = [], []
    for s in manifest["sources"][name]["shards"]:
        ds = open_shard(out / s["prefix"])  # held: its arrays are views of its memory map
        lengths += ds.sequence_lengths.tolist()
        tokens.append(np.fromfile(out / f"{s['prefix']}.bin", dtype=np.uint16))
    return lengths, np.concatenate(tokens) if tokens else np.empty(0)


@pytest.fixture(scope="module")
def built(corpus):
    d, sources = corpus
    recipe = str(_recipe(d, sources))
    assert main(["data", "build", recipe]) == 0
    multi = [f"build.output_dir={d / 'three'}"]
    for i in range(3):
        assert main(["data", "build", recipe, "--worker", f"{i}/3", *multi]) == 0
    assert main(["data", "merge", recipe, *multi]) == 0
    return d, recipe, read_manifest(d / "one"), read_manifest(d / "three")


def test_three_workers_merge_to_the_one_worker_token_streams(built):
    d, _, one, three = built
    assert three["workers"]["count"] == 3
    for name in ("ko", "web", "de", "txt"):
        a, b = one["sources"][name], three["sources"][name]
        len_a, tok_a = _stream(d / "one", one, name)
        len_b, tok_b = _stream(d / "three", three, name)
        assert len_a == len_b and np.array_equal(tok_a, tok_b), name
        for field in ("documents", "tokens", "languages", "bad_records", "bad_record_examples",
                      "decontamination"):
            assert a[field] == b[field], (name, field)
        # a source prefix (glob of numbered shards) reads the same stream as the manifest
        comp = BlendComponent(name=name, prefix=str(d / "three" / name), weight=1.0)
        assert [p.name for p in resolve_shards(comp, "t")] == [s["prefix"] for s in b["shards"]]
    assert one["totals"] == three["totals"]
    assert one["decontamination"] == three["decontamination"]
    assert one["decontamination"]["eval_sets"]["planted"]["documents_removed"] == 1
    ko = three["sources"]["ko"]
    assert [(e["line"], e["reason"].split()[0]) for e in ko["bad_record_examples"]] == \
        [(18, "invalid"), (42, "empty")]
    # the split really split: the ko file and the web directory are read by several workers
    parts = [json.loads((d / "three" / f"manifest.worker-{i:05d}-of-00003.json").read_text())
             for i in range(3)]
    assert sum(bool(p["sources"]["ko"]["documents"]) for p in parts) >= 2
    assert len(ko["shards"]) > len(one["sources"]["ko"]["shards"])


def test_a_stage_packs_the_same_samples_from_both_builds(built):
    from data_pipeline import build_stage_dataset
    from data_pipeline.config import StageDataConfig

    d = built[0]

    def stage(out: str):
        blend = [BlendComponent(name="web", prefix=str(d / out), sources=["ko", "web"], weight=0.7),
                 BlendComponent(name="de", prefix=str(d / out / "de"), weight=0.3)]
        return build_stage_dataset(StageDataConfig(name="s", seq_length=128, blend=blend,
                                                   long_doc_policy="split", index_cache_dir="",
                                                   blend_window_samples=20), seed=7)

    a, b = stage("one"), stage("three")
    assert a.num_samples == b.num_samples > 0
    for i in range(a.num_samples):
        x, y = a[i], b[i]
        assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.document_ids,
                                                                      y.document_ids), i


def _copy(d: Path, name: str) -> Path:
    dst = d / name
    shutil.copytree(d / "three", dst)
    return dst


def _cfg(d: Path, out: Path, **kw) -> BuildConfig:
    from data_pipeline.recipe import load_data_recipe

    return load_data_recipe(str(d / "recipe.yaml"), [f"build.output_dir={out}",
                                                     *[f"build.{k}={v}" for k, v in kw.items()]]).build


def _assert_untouched(out: Path, before: dict) -> None:
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize("case", ["missing", "duplicated", "tokenizer", "settings", "inputs",
                                  "shard"])
def test_bad_partials_are_a_data_error_naming_the_file_and_nothing_is_written(built, case):
    d = built[0]
    out = _copy(d, f"bad_{case}")
    (out / "manifest.json").unlink()
    cfg, match = _cfg(d, out), None
    if case == "missing":
        (out / "manifest.worker-00001-of-00003.json").unlink()
        match = "missing: 1/3"
    elif case == "duplicated":
        shutil.copy(out / "manifest.worker-00002-of-00003.json", out / "manifest.worker-x.json")
        match = "worker 2/3 is duplicated.*manifest.worker-x.json"
    elif case == "tokenizer":
        p = out / "manifest.worker-00000-of-00003.json"
        m = json.loads(p.read_text())
        m["tokenizer"]["sha256"] = "0" * 64
        p.write_text(json.dumps(m))
        match = "worker-00000-of-00003.json: built from other tokenizer"
    elif case == "settings":
        cfg, match = _cfg(d, out, nfc=False), "worker-00000-of-00003.json: built from other recipe"
    elif case == "inputs":  # one more record in ko.jsonl (restored below)
        ko, orig = d / "ko.jsonl", (d / "ko.jsonl").read_bytes()
        st = ko.stat()
        ko.write_bytes(orig + json.dumps({"text": "새 문서."}).encode() + b"\n")
        match = "worker-00000-of-00003.json: built from other input files"
    else:
        shard = out / json.loads((out / "manifest.worker-00001-of-00003.json").read_text()
                                 )["sources"]["ko"]["shards"][0]["prefix"]
        Path(f"{shard}.bin").write_bytes(Path(f"{shard}.bin").read_bytes()[:-2])
        match = f"{shard.name}.bin: \\d+ bytes, .*truncated or overwritten"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    try:
        with pytest.raises(DataError, match=match):
            merge(cfg)
    finally:
        if case == "inputs":
            ko.write_bytes(orig)
            os.utime(ko, ns=(st.st_atime_ns, st.st_mtime_ns))
    _assert_untouched(out, before)


def test_rerun_worker_skips_its_built_sources_and_stale_partials_go(built):
    d = built[0]
    out = _copy(d, "rerun")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_[0-9]*.bin")}
    again = build(_cfg(d, out), (1, 3))
    assert all(e["skipped"] for e in again["sources"].values())
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_[0-9]*.bin")} == before
    (out / "manifest.worker-00000-of-00002.json").write_text("{}")  # of an older 2-worker build
    build(_cfg(d, out), (1, 3))
    assert not (out / "manifest.worker-00000-of-00002.json").exists()
    assert len(list(out.glob("manifest.worker-*-of-00003.json"))) == 3


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_split_reads_every_record_exactly_once_in_order(corpus, n):
    _, sources = corpus
    srcs = [SourceConfig(**s) for s in sources]
    plan = split_inputs(srcs, n)
    for src in srcs:
        whole = list(iter_records(src))
        parts = [r for w in plan for r in iter_records(src, w.get(src.name, []))]
        assert parts == whole, (src.name, n)


def test_worker_spec_is_checked():
    assert parse_worker("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError, match="--worker"):
            parse_worker(bad)
