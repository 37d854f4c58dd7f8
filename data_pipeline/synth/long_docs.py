"""Long documents with long-range references, for context extension.

A document states a few facts at its start (a code, a guide, a city), runs through many
sections of ordinary text, and ends by asking for and restating those facts: answering needs
the beginning of the document, thousands of tokens back.
"""

from __future__ import annotations

import random

from data_pipeline.synth import lexicon as L
from data_pipeline.synth import multilingual
from data_pipeline.synth.rng import sub_rng


def _facts(rng: random.Random) -> dict[str, str]:
    return {"code": f"{rng.randint(1000, 9999)}-{rng.randint(100, 999)}",
            "guide": rng.choice(L.NAMES["en"]),
            "city": rng.choice(L.COUNTRIES["en"])[1],
            "item": rng.choice(L.FOODS["en"]).removeprefix("the ")}


def document(rng: random.Random, target_bytes: int, index: int) -> str:
    """One long document of about `target_bytes` bytes."""
    f = _facts(rng)
    parts = [f"Expedition log {index}. Remember these facts: the vault code is {f['code']}; "
             f"the guide is {f['guide']}; the meeting city is {f['city']}; "
             f"the supply we must not forget is {f['item']}."]
    section = 1
    while sum(len(p.encode()) for p in parts) < target_bytes:
        lang = rng.choice(L.LANGUAGES)
        body = " ".join(multilingual.document("en", rng) if lang == "en" else
                        multilingual.document(lang, rng) for _ in range(2))
        parts.append(f"Section {section} ({lang}). {body}")
        section += 1
    parts.append(f"Final check. What was the vault code from the start of this log? It was "
                 f"{f['code']}. The guide was {f['guide']}, we met in {f['city']}, and the "
                 f"supply was {f['item']}.")
    return "\n\n".join(parts)


def generate(seed: int, count: int, min_bytes: int, max_bytes: int) -> list[dict]:
    """`count` long documents with lengths uniform in [min_bytes, max_bytes]."""
    rng = sub_rng(seed, "long_docs")
    return [{"id": f"long-{i:06d}", "lang": "multi",
             "text": document(rng, rng.randint(min_bytes, max_bytes), i)} for i in range(count)]
