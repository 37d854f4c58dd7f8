"""Compositional documents in ko, en, es, de, ja, vi from the aligned word lists.

Each document follows one person through a few sentences: actions whose verb fits the object
(eat -> food, read -> text), a description of what they ate, a capital-city fact, a correct sum
or product, and the weather in a capital. Word order and particles follow each language.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from data_pipeline.synth import lexicon as L
from data_pipeline.synth.rng import sub_rng


def _has_batchim(word: str) -> bool:
    """Whether a Hangul word ends in a final consonant (selects 은/는, 이/가, 을/를)."""
    code = ord(word[-1]) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


def _ko_particle(word: str, with_batchim: str, without: str) -> str:
    return word + (with_batchim if _has_batchim(word) else without)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _es_adj(adj: str, noun_phrase: str) -> tuple[str, str]:
    """Spanish predicate adjective agreeing with the noun phrase's article; returns (verb, adj)."""
    article = noun_phrase.split()[0]
    feminine, plural = article in ("la", "las", "una"), article in ("los", "las")
    if feminine and adj.endswith("o"):
        adj = adj[:-1] + "a"
    return ("estaban", adj + "s") if plural else ("estaba", adj)


def _de_nominative(noun_phrase: str) -> tuple[str, bool]:
    article, noun = noun_phrase.split(" ", 1)
    plural = noun == "Nudeln"
    return {"den": "Der", "das": "Das", "die": "Die"}[article] + " " + noun, plural


def _ja_adj(adj: str) -> str:
    return adj + "でした" if adj == "新鮮" else adj + "かったです"


def action(lang: str, rng: random.Random, name: str) -> tuple[str, int]:
    """A time/person/place/verb/object sentence; returns it and the food index (or -1)."""
    verb = rng.choice(sorted(L.VERBS))
    objects = L.VERB_OBJECTS[verb][lang]
    k = rng.randrange(len(objects))
    obj, place, time = objects[k], rng.choice(L.PLACES[lang]), rng.choice(L.TIMES[lang])
    v = L.VERBS[verb][lang]
    food = k if L.VERB_OBJECTS[verb] is L.FOODS else -1
    if lang == "en":
        return f"{time}, {name} {v} {obj} {place}.", food
    if lang == "es":
        return f"{time}, {name} {v} {obj} {place}.", food
    if lang == "de":
        return f"{time} {v} {name} {obj} {place}.", food
    if lang == "ja":
        return f"{time}、{name}さんは{place}で{obj}を{v}。", food
    if lang == "ko":
        subj, o = _ko_particle(name, "은", "는"), _ko_particle(obj, "을", "를")
        return f"{time} {subj} {place}에서 {o} {v}.", food
    return f"{time}, {name} đã {v} {obj} {place}.", food


def describe(lang: str, rng: random.Random, food: int) -> str:
    """How the food of the previous sentence was."""
    noun, adj = L.FOODS[lang][food], rng.choice(L.ADJECTIVES[lang])
    if lang == "en":
        return f"{_cap(noun)} was {adj}."
    if lang == "es":
        verb, adj = _es_adj(adj, noun)
        return f"{_cap(noun)} {verb} {adj}."
    if lang == "de":
        nom, plural = _de_nominative(noun)
        return f"{nom} {'waren' if plural else 'war'} {adj}."
    if lang == "ja":
        return f"その{noun}は{_ja_adj(adj)}。"
    if lang == "ko":
        return f"그 {_ko_particle(noun, '이', '가')} {adj}."
    return f"{_cap(noun)} rất {adj}."


def capital(lang: str, rng: random.Random) -> str:
    """A true capital-city fact."""
    country, city = rng.choice(L.COUNTRIES[lang])
    return {
        "en": f"The capital of {country} is {city}.",
        "es": f"La capital de {country} es {city}.",
        "de": f"Die Hauptstadt von {country} ist {city}.",
        "ja": f"{country}の首都は{city}です。",
        "ko": f"{country}의 수도는 {city}입니다.",
        "vi": f"Thủ đô của {country} là {city}.",
    }[lang]


def arithmetic(lang: str, rng: random.Random) -> str:
    """A correct sum or product of small numbers."""
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.6:
        words = {"en": "plus", "es": "más", "de": "plus", "ja": "たす", "ko": "더하기", "vi": "cộng"}
        c = a + b
    else:
        a, b = a % 10, b % 10
        words = {"en": "times", "es": "por", "de": "mal", "ja": "かける", "ko": "곱하기", "vi": "nhân"}
        c = a * b
    op = words[lang]
    return {
        "en": f"{a} {op} {b} equals {c}.",
        "es": f"{a} {op} {b} es igual a {c}.",
        "de": f"{a} {op} {b} ist {c}.",
        "ja": f"{a}{op}{b}は{c}です。",
        "ko": f"{a} {op} {b}의 답은 {c}입니다.",
        "vi": f"{a} {op} {b} bằng {c}.",
    }[lang]


def weather(lang: str, rng: random.Random) -> str:
    """The weather in a capital city."""
    _, city = rng.choice(L.COUNTRIES[lang])
    w = rng.choice(L.WEATHER[lang])
    return {
        "en": f"In {city}, it was {w}.",
        "es": f"En {city}, el día estaba {w}.",
        "de": f"In {city} war es {w}.",
        "ja": f"{city}は{w}でした。",
        "ko": f"{city}의 날씨는 {w}.",
        "vi": f"Ở {city}, trời {w}.",
    }[lang]


_SEP = {"ja": ""}


def document(lang: str, rng: random.Random, max_sentences: int = 12) -> str:
    """One document: a person's day, interleaved with facts."""
    name = rng.choice(L.NAMES[lang])
    sentences: list[str] = []
    others: list[Callable[[str, random.Random], str]] = [capital, arithmetic, weather]
    for _ in range(rng.randint(3, max_sentences)):
        if rng.random() < 0.55:
            text, food = action(lang, rng, name)
            sentences.append(text)
            if food >= 0 and rng.random() < 0.5:
                sentences.append(describe(lang, rng, food))
        else:
            sentences.append(rng.choice(others)(lang, rng))
    return _SEP.get(lang, " ").join(sentences)


def generate(lang: str, seed: int, target_bytes: int) -> list[dict]:
    """Documents in `lang` until their UTF-8 text reaches `target_bytes`."""
    rng = sub_rng(seed, "multilingual", lang)
    records, size = [], 0
    while size < target_bytes:
        text = document(lang, rng)
        records.append({"id": f"{lang}-{len(records):06d}", "lang": lang, "text": text})
        size += len(text.encode())
    return records
