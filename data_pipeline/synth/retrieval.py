"""Synthetic retrieval samples (key/value lookup) for context extension.

A sample lists key/value pairs, then asks for the value of one key at a random depth; the
answer is only in the context. Question phrasing rotates through the six languages.
"""

from __future__ import annotations

import random

from data_pipeline.synth import lexicon as L
from data_pipeline.synth.rng import sub_rng

_QUESTION = {
    "en": "What is the value for key {k}?",
    "es": "¿Cuál es el valor de la clave {k}?",
    "de": "Was ist der Wert für den Schlüssel {k}?",
    "ja": "キー {k} の値は何ですか？",
    "ko": "키 {k}의 값은 무엇입니까?",
    "vi": "Giá trị của khóa {k} là gì?",
}


def _key(rng: random.Random) -> str:
    return f"{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}"


def sample(rng: random.Random, num_pairs: int, lang: str) -> dict:
    """One retrieval sample with `num_pairs` distinct keys."""
    keys: dict[str, int] = {}
    while len(keys) < num_pairs:
        keys.setdefault(_key(rng), rng.randint(0, 99999))
    items = list(keys.items())
    target, value = items[rng.randrange(len(items))]
    lines = [f"{k}: {v}" for k, v in items]
    question = _QUESTION[lang].format(k=target)
    text = ("Key-value store.\n" + "\n".join(lines) + f"\nQuestion: {question}\nAnswer: {value}")
    return {"lang": lang, "key": target, "value": str(value), "num_pairs": num_pairs, "text": text}


def generate(seed: int, count: int, max_pairs: int) -> list[dict]:
    """`count` samples with 4..max_pairs pairs (log-uniform, so many short and some long)."""
    rng = sub_rng(seed, "retrieval")
    out = []
    for i in range(count):
        n = int(round(4 * (max_pairs / 4) ** rng.random()))
        out.append({"id": f"retrieval-{i:06d}", **sample(rng, n, L.LANGUAGES[i % 6])})
    return out


# ---- dense retrieval practice (generated at data build time: `format: synth`) -------------
# The context-extension stages' synthetic component, as K-EXAONE's: natural haystack text with
# many key/value needles at sentence boundaries at every depth, then several questions, each
# answered right after it, at the end. Keys and values come from the "dense_retrieval" stream
# of the build's seed (NIAH draws its own from "niah": tests check the two never meet). Most
# samples use NIAH's phrasing, the rest other phrasings, so the skill is retrieval, not one
# sentence.
DENSE_PHRASINGS = (
    (0.6, "The special magic number for {k} is {v}.",
     "\nQuestion: What is the special magic number for {k}?\nAnswer: {v}"),
    (0.2, "The value for key {k} is {v}.", "\nQuestion: What is the value for key {k}?\nAnswer: {v}"),
    (0.2, "Remember: the code of {k} is {v}.", "\nQuestion: What is the code of {k}?\nAnswer: {v}"),
)


def _haystack(rng: random.Random, lang: str, tokenizer, num_tokens: int) -> list[tuple[str, int]]:
    """Sentences of fresh compositional text in `lang` (with their token counts) until
    `num_tokens` tokens."""
    from data_pipeline.synth import multilingual
    from data_pipeline.tokenizer import sentence_chunks

    out: list[tuple[str, int]] = []
    total = 0
    while total < num_tokens:
        chunks = [c.strip() for c in sentence_chunks(multilingual.document(lang, rng)) if c.strip()]
        for c, enc in zip(chunks, tokenizer.encode_batch([" " + c for c in chunks],
                                                         add_special_tokens=False), strict=True):
            if total >= num_tokens:
                break
            out.append((c, len(enc.ids)))
            total += len(enc.ids)
    return out


def dense_sample(rng: random.Random, tokenizer, num_tokens: int, lang: str, num_pairs: int,
                 num_questions: int) -> dict:
    """About `num_tokens` tokens: `num_pairs` needles in `lang` haystack text at random sentence
    boundaries, then `num_questions` of their keys asked (random order) and answered."""
    keys: dict[str, str] = {}
    while len(keys) < num_pairs:
        keys.setdefault(_key(rng), str(rng.randint(10_000, 99_999)))
    _, needle, question = rng.choices(DENSE_PHRASINGS, weights=[p[0] for p in DENSE_PHRASINGS])[0]
    needles = [needle.format(k=k, v=v) for k, v in keys.items()]
    asked = rng.sample(list(keys.items()), num_questions)
    qa = "".join(question.format(k=k, v=v) for k, v in asked)
    used = sum(len(e.ids) for e in tokenizer.encode_batch([" " + n for n in needles] + [qa],
                                                           add_special_tokens=False))
    hay = [s for s, _ in _haystack(rng, lang, tokenizer, max(num_tokens - used, 1))]
    slots = sorted(rng.randrange(len(hay) + 1) for _ in needles)
    for offset, (slot, text) in enumerate(zip(slots, needles, strict=True)):
        hay.insert(slot + offset, text)
    return {"lang": lang, "num_pairs": num_pairs, "keys": [k for k, _ in asked],
            "values": [v for _, v in asked], "text": " ".join(hay) + qa}


def generate_dense(seed: int, count: int, num_tokens: int, pairs: tuple[int, int],
                   questions: tuple[int, int], tokenizer_path: str) -> list[dict]:
    """`count` dense samples of about `num_tokens` tokens, pairs and questions uniform in the
    given inclusive ranges (questions capped by pairs); haystack languages in turn."""
    from data_pipeline.config import resolve_path
    from data_pipeline.tokenizer import load

    tokenizer = load(resolve_path(tokenizer_path))
    rng = sub_rng(seed, "dense_retrieval", num_tokens)
    out = []
    for i in range(count):
        n = rng.randint(*pairs)
        q = min(n, rng.randint(*questions))
        out.append({"id": f"dense-{num_tokens}-{i:06d}",
                    **dense_sample(rng, tokenizer, num_tokens, L.LANGUAGES[i % 6], n, q)})
    return out


# ---- recall drill (generated at build time: `format: synth`) ------------------------------
# Key/value pairs listed, then listed again: in the same order half of the time (every token of
# the second listing is a copy: the pattern that forms induction heads fast), shuffled the
# other half (each value is then a lookup of its key, NIAH's skill without the haystack). Keys
# and values from the "recall_drill" stream, never NIAH's.
def recall_drill(seed: int, count: int, pairs: tuple[int, int]) -> list[dict]:
    """`count` drills with a pair count uniform in `pairs` (inclusive)."""
    rng = sub_rng(seed, "recall_drill")
    out = []
    for i in range(count):
        keys: dict[str, str] = {}
        n = rng.randint(*pairs)
        while len(keys) < n:
            keys.setdefault(_key(rng), str(rng.randint(10_000, 99_999)))
        items = list(keys.items())
        again = items if rng.random() < 0.5 else rng.sample(items, len(items))
        first = "\n".join(f"{k} is {v}." for k, v in items)
        second = "\n".join(f"{k} is {v}." for k, v in again)
        out.append({"id": f"recall-{i:06d}", "lang": "en",
                    "text": f"Pairs:\n{first}\nAgain:\n{second}"})
    return out
