"""Shipped corpus, generators and tokenizer: deterministic, verifiable, the promised shape."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest

from data_pipeline import tokenizer as T
from data_pipeline.synth import CorpusSizes, generate_corpus, reasoning

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "corpus"
TOKENIZER = ROOT / "data" / "tokenizer" / "tokenizer.json"


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (CORPUS / name).read_text(encoding="utf-8").splitlines()]


def test_generate_reproduces_shipped_corpus_byte_identically(tmp_path):
    written = generate_corpus(tmp_path, seed=1234)
    shipped = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in CORPUS.glob("*.jsonl")}
    assert written == shipped


def test_generate_depends_on_seed(tmp_path):
    small = CorpusSizes(bytes_per_language=2000, reasoning_samples=5, long_docs=1,
                        long_doc_min_bytes=500, long_doc_max_bytes=600, retrieval_samples=3)
    a = generate_corpus(tmp_path / "a", seed=1, sizes=small)
    b = generate_corpus(tmp_path / "b", seed=2, sizes=small)
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_shipped_corpus_size_and_languages():
    total = sum(p.stat().st_size for p in CORPUS.glob("*.jsonl"))
    assert total <= 4 * 1024 * 1024
    for lang in ("ko", "en", "es", "de", "ja", "vi"):
        recs = _records(f"{lang}.jsonl")
        assert len(recs) > 500 and all(r["lang"] == lang for r in recs)
        assert len({r["text"] for r in recs}) == len(recs)  # varied, not one template repeated


def test_reasoning_answers_are_correct_by_independent_solver():
    recs = _records("reasoning.jsonl")
    assert {r["kind"] for r in recs} == {"arithmetic", "ordering", "sorting"}
    assert all(reasoning.verify(r) for r in recs)
    assert all(f"{reasoning.THINK_OPEN}\n" in r["text"] for r in recs)
    wrong = dict(recs[0], answer=str(int(recs[0]["answer"]) + 1)) if recs[0]["kind"] == "arithmetic" \
        else dict(recs[0], answer="nobody")
    assert not reasoning.verify(wrong)


def test_retrieval_value_is_in_context_once():
    for r in _records("retrieval.jsonl"):
        context = r["text"].split("\nQuestion:")[0]
        assert context.count(f"\n{r['key']}: ") == 1
        assert f"\n{r['key']}: {r['value']}\n" in context + "\n"


def test_long_docs_refer_back_to_their_start():
    recs = _records("long_docs.jsonl")
    assert max(len(r["text"].encode()) for r in recs) > 10_000
    for r in recs:
        code = r["text"].split("the vault code is ")[1].split(";")[0]
        assert r["text"].rstrip().split("It was ")[-1].startswith(code)


def test_shipped_tokenizer_vocab_specials_and_nfc():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(TOKENIZER))
    assert tok.get_vocab_size() == 4096 and tok.get_vocab_size() % 128 == 0
    assert [tok.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")] == [0, 1, 2]
    text = "Café 서울에서 ニュース Tiếng Việt"
    nfd = unicodedata.normalize("NFD", text)
    assert nfd != text and tok.encode(nfd).ids == tok.encode(text).ids
    hf = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))
    assert len(hf) == 4096 and hf(text)["input_ids"] == tok.encode(text).ids
    assert tok.decode(tok.encode(text).ids) == text


@pytest.fixture(scope="module")
def small_texts() -> list[str]:
    return [r["text"] for name in ("en.jsonl", "de.jsonl") for r in _records(name)[:400]]


def test_superbpe_yields_more_bytes_per_token_at_same_vocab(small_texts):
    cfg = T.TokenizerTrainConfig(vocab_size=768, superbpe=True, superbpe_transition=0.7)
    plain = T.finalize(T.train_bpe(small_texts, cfg), cfg)
    sup = T.finalize(T.train_superbpe(small_texts, cfg), cfg)
    assert plain.get_vocab_size() == sup.get_vocab_size() == 768
    assert T.bytes_per_token(sup, small_texts) > 1.1 * T.bytes_per_token(plain, small_texts)
    assert any("Ġ" in t[1:] for t in sup.get_vocab())  # superwords cross a word boundary
    assert not any("Ġ" in t[1:] for t in plain.get_vocab() if not t.startswith("<"))
    for text in small_texts[:50]:
        assert sup.decode(sup.encode(text).ids) == text


def test_special_token_ids_are_configurable(small_texts):
    cfg = T.TokenizerTrainConfig(vocab_size=512, pad_id=0, bos_id=1, eos_id=53)
    tok = T.finalize(T.train_bpe(small_texts, cfg), cfg)
    assert (tok.token_to_id("<pad>"), tok.token_to_id("<bos>"), tok.token_to_id("<eos>")) == (0, 1, 53)
    assert tok.get_vocab_size() == 512
