"""`build.decontaminate`: documents sharing a 13-gram of normalised text with an evaluation set
are dropped (or marked), a 12-gram overlap is kept, normalisation variants (case, NFKC
full-width forms, punctuation, whitespace) are caught, CJK counts characters, and the manifest
counts the documents each evaluation set removed."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, DecontaminationConfig, SourceConfig, validate_build
from data_pipeline.decontam import words
from data_pipeline.shards import open_shard
from exaone_train.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = str(ROOT / "data" / "tokenizer" / "tokenizer.json")
QA = "Which river flows through the ancient city of Hanoi and reaches the sea near Hai Phong"
JA = "東京の古い図書館には百年前の地図が静かに眠っている"
QA_W = QA.split()
# (document, eval sets it shares a 13-gram with)
DOCS = [
    ("Some intro text. " + " ".join(QA_W[1:14]) + " and more.", ["qa"]),       # 13 words
    ("Some intro text. " + " ".join(QA_W[1:13]) + " and more.", []),           # 12 words
    ("Ｗｈｉｃｈ RIVER flows,\tthrough: the ANCIENT city of \"Hanoi\"... and\n\nreaches THE "
     "sea!", ["qa"]),                                                         # variants
    ("今日は" + JA[3:16] + "でした。", ["ja"]),                                    # 13 characters
    ("今日は" + JA[3:15] + "でした。", []),                                        # 12 characters
    ("오늘은 날씨가 좋습니다. what is two plus two", []),  # a short eval text is not checked
    (" ".join(QA_W[:13]) + "。" + JA[:13], ["qa", "ja"]),                       # both sets
    ("An unrelated document about gardens, bread and the weather in spring.", []),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decontam")
    (d / "train.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                           for t, _ in DOCS), encoding="utf-8")
    (d / "qa.jsonl").write_text(json.dumps({"question": QA}) + "\n"
                                + json.dumps({"question": "What is two plus two?"}) + "\n")
    (d / "ja.jsonl").write_text(json.dumps({"text": JA}, ensure_ascii=False) + "\n")
    return d


def _build(d: Path, out: str, **decon) -> dict:
    evals = [SourceConfig(name="qa", path=str(d / "qa.jsonl"), text_field="question"),
             SourceConfig(name="ja", path=str(d / "ja.jsonl"))]
    cfg = BuildConfig(sources=[SourceConfig(name="train", path=str(d / "train.jsonl"), language="x")],
                      tokenizer=TOKENIZER, output_dir=str(d / out), num_workers=0, progress=False,
                      decontaminate=DecontaminationConfig(eval_sets=evals, **decon))
    return build(cfg)


def _tokens(d: Path, out: str, manifest: dict) -> list[list[int]]:
    (shard,) = manifest["sources"]["train"]["shards"]
    ds = open_shard(d / out / shard["prefix"])
    return [ds[i].tolist() for i in range(len(ds))]


def _direct(text: str) -> list[int]:
    tok = Tokenizer.from_file(TOKENIZER)
    return tok.encode(unicodedata.normalize("NFC", text), add_special_tokens=False).ids + [2]


def test_normalisation_is_nfkc_lowercase_punctuation_free_and_cjk_per_character():
    assert words("Ｗｈｉｃｈ RIVER—flows,\t\"Hanoi\"...x_y") == ["which", "river", "flows", "hanoi",
                                                              "x", "y"]
    assert words("今日は晴れ。Seoul 서울 날씨") == ["今", "日", "は", "晴", "れ", "seoul", "서울", "날씨"]


def test_drop_removes_exactly_the_planted_13_gram_documents(files):
    manifest = _build(files, "drop")
    kept = [t for t, hit in DOCS if not hit]
    assert _tokens(files, "drop", manifest) == [_direct(t) for t in kept]
    entry = manifest["sources"]["train"]
    assert entry["documents"] == len(kept)
    assert entry["decontamination"] == {"qa": 3, "ja": 2}
    ev = manifest["decontamination"]["eval_sets"]
    assert (ev["qa"]["documents_removed"], ev["ja"]["documents_removed"]) == (3, 2)
    assert ev["qa"]["texts"] == 2 and ev["qa"]["texts_shorter_than_ngram"] == 1
    assert ev["ja"]["ngrams"] == len(JA) - 13 + 1


def test_mark_keeps_documents_and_lists_the_contaminated_ones(files):
    manifest = _build(files, "mark", action="mark")
    assert _tokens(files, "mark", manifest) == [_direct(t) for t, _ in DOCS]
    (shard,) = manifest["sources"]["train"]["shards"]
    marked = np.load(files / "mark" / f"{shard['prefix']}.contaminated.npy")
    assert marked.tolist() == [i for i, (_, hit) in enumerate(DOCS) if hit]
    assert shard["contaminated_documents"] == 4
    assert manifest["decontamination"]["eval_sets"]["ja"]["documents_marked"] == 2


def test_a_shorter_ngram_also_catches_the_12_gram_overlaps(files):
    manifest = _build(files, "ngram12", ngram=12)
    assert manifest["sources"]["train"]["decontamination"] == {"qa": 4, "ja": 3}


def test_bad_decontamination_settings_are_config_errors(files):
    src = [SourceConfig(name="a", path="x.jsonl")]
    for decon, field in ((DecontaminationConfig(action="delete"), "action"),
                         (DecontaminationConfig(ngram=0), "ngram"),
                         (DecontaminationConfig(eval_sets=[SourceConfig(name="e", path="p"),
                                                           SourceConfig(name="e", path="q")]),
                          "eval_sets")):
        with pytest.raises(ConfigError, match=f"build.decontaminate.{field}"):
            validate_build(BuildConfig(sources=src, decontaminate=decon))
