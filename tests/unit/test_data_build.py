"""`data build`: tokens read back through megatron-core equal direct tokenization; manifest,
skip-if-up-to-date, bad records, corrupt shards."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, SourceConfig
from data_pipeline.shards import check_shard, open_shard
from exaone_train.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = str(ROOT / "data" / "tokenizer" / "tokenizer.json")
CORPUS = ROOT / "data" / "corpus"


def _jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, list[SourceConfig], dict[str, list[tuple[str, str]]]]:
    """Sources in every format, and the (text, language) each should yield, in order."""
    d = tmp_path_factory.mktemp("src")
    ko = [json.loads(x) for x in (CORPUS / "ko.jsonl").read_text().splitlines()[:60]]
    en = [json.loads(x) for x in (CORPUS / "en.jsonl").read_text().splitlines()[:60]]
    ko[0]["text"] = unicodedata.normalize("NFD", ko[0]["text"])  # NFC must undo this
    _jsonl(d / "ko.jsonl", ko)
    pq.write_table(pa.table({"body": [r["text"] for r in en], "lang": ["en"] * 60}), d / "en.parquet")
    (d / "txt").mkdir()
    texts = ["Ein kurzer Text.\nZweite Zeile.", "Un texto corto."]
    for i, t in enumerate(texts):
        (d / "txt" / f"{i}.txt").write_text(t, encoding="utf-8")
    import datasets

    hf_rows = [r["text"] for r in en[:20]]
    datasets.Dataset.from_dict({"content": hf_rows}).save_to_disk(str(d / "hf"))
    srcs = [SourceConfig(name="ko", path=str(d / "ko.jsonl"), language="ko"),
            SourceConfig(name="en", path=str(d / "en.parquet"), format="parquet",
                         text_field="body", language_field="lang"),
            SourceConfig(name="txt", path=str(d / "txt"), format="text", language="xx"),
            SourceConfig(name="hf", path=str(d / "hf"), format="hf_disk", text_field="content",
                         language="en"),
            SourceConfig(name="hfjson", path=str(d / "ko.jsonl"), format="hf_json", language="ko")]
    expected = {"ko": [(r["text"], "ko") for r in ko], "en": [(r["text"], "en") for r in en],
                "txt": [(t, "xx") for t in texts], "hf": [(t, "en") for t in hf_rows],
                "hfjson": [(r["text"], "ko") for r in ko]}
    return d, srcs, expected


def _direct(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(unicodedata.normalize("NFC", text), add_special_tokens=False).ids + [2]


@pytest.mark.parametrize("workers", [0, 2])
def test_indexed_dataset_tokens_equal_direct_tokenization(sources, tmp_path, workers):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    _, srcs, expected = sources
    cfg = BuildConfig(sources=srcs, tokenizer=TOKENIZER, output_dir=str(tmp_path),
                      num_workers=workers, batch_documents=16, progress=False)
    manifest = build(cfg)
    tok = Tokenizer.from_file(TOKENIZER)
    for name, rows in expected.items():
        (shard,) = manifest["sources"][name]["shards"]
        ds = IndexedDataset(str(tmp_path / shard["prefix"]), multimodal=False, mmap=True)
        assert len(ds) == len(rows)
        for i, (text, _) in enumerate(rows):
            assert ds[i].tolist() == _direct(tok, text), (name, i)
        langs: dict[str, list[int]] = {}
        for text, lang in rows:
            c = langs.setdefault(lang, [0, 0])
            c[0], c[1] = c[0] + 1, c[1] + len(_direct(tok, text))
        got = manifest["sources"][name]["languages"]
        assert {k: [v["documents"], v["tokens"]] for k, v in got.items()} == langs
    assert manifest["tokenizer"]["vocab_size"] == 4096 and manifest["dtype"] == "uint16"
    assert manifest["totals"]["documents"] == sum(len(r) for r in expected.values())


def test_rebuild_skips_up_to_date_sources_and_redoes_changed(sources, tmp_path):
    d, srcs, _ = sources
    own = tmp_path / "ko.jsonl"
    own.write_bytes((d / "ko.jsonl").read_bytes())
    cfg = BuildConfig(sources=[SourceConfig(name="ko", path=str(own), language="ko"), srcs[2]],
                      tokenizer=TOKENIZER, output_dir=str(tmp_path / "out"), num_workers=0,
                      progress=False)
    first = build(cfg)
    again = build(cfg)
    assert [again["sources"][n]["skipped"] for n in ("ko", "txt")] == [True, True]
    assert again["totals"] == first["totals"]
    with open(own, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "새 문서입니다."}, ensure_ascii=False) + "\n")
    third = build(cfg)
    assert third["sources"]["ko"]["skipped"] is False and third["sources"]["txt"]["skipped"]
    assert third["sources"]["ko"]["documents"] == first["sources"]["ko"]["documents"] + 1


def test_bad_records_are_counted_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": "good one."}).encode(), json.dumps({"other": "x"}).encode(),
             b'{"text": "bad \xff utf8"}', json.dumps({"text": "   "}).encode(), b"{not json",
             json.dumps({"text": 5}).encode(), json.dumps({"text": "good two."}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = BuildConfig(sources=[SourceConfig(name="bad", path=str(path), language="en")],
                      tokenizer=TOKENIZER, output_dir=str(tmp_path / "out"), num_workers=0,
                      progress=False)
    entry = build(cfg)["sources"]["bad"]
    assert entry["documents"] == 2 and entry["bad_records"] == 5
    got = [(e["line"], e["reason"].split()[0]) for e in entry["bad_record_examples"]]
    assert got == [(2, "missing"), (3, "invalid"), (4, "empty"), (5, "invalid"), (6, "field")]
    assert all(e["file"] == str(path) for e in entry["bad_record_examples"])


@pytest.fixture()
def shard(tmp_path) -> Path:
    cfg = BuildConfig(sources=[SourceConfig(name="vi", path=str(CORPUS / "vi.jsonl"), language="vi")],
                      tokenizer=TOKENIZER, output_dir=str(tmp_path), num_workers=0, progress=False)
    build(cfg)
    return tmp_path / "vi_00000"


@pytest.mark.parametrize("suffix,cut", [(".idx", 10), (".idx", 1000), (".bin", 2)])
def test_truncated_shard_is_a_data_error_naming_the_file(shard, suffix, cut):
    check_shard(shard)
    path = Path(f"{shard}{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(DataError, match=path.name):
        open_shard(shard)


def test_corrupt_index_header_is_a_data_error(shard):
    path = Path(f"{shard}.idx")
    data = bytearray(path.read_bytes())
    data[:4] = b"JUNK"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="vi_00000.idx"):
        check_shard(shard)
    np.testing.assert_equal(len(data) > 0, True)
