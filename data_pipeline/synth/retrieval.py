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
