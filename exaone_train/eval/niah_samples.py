"""NIAH samples: a haystack of natural text, a needle sentence at a chosen depth, the question,
the answer. A pure function of (NiahConfig, corpus, tokenizer): no torch, no ranks, so every
rank builds the same samples and every call of a run (each stage gate, each retry) asks the
same questions.

Sample layout (exactly `length` tokens, one document, positions 0..length-1):

    haystack[:p]  needle  haystack[p:]  question  answer

- haystack: sentences of one corpus source (`NiahConfig.haystack_sources`, languages in turn),
  from a random sentence on, cut to fill the length exactly. Each sentence is tokenized on its
  own with the leading space it has in the text: byte-level BPE splits before that space
  anyway, so the tokens are the ones the model saw in training.
- needle: " " + needle_template with a random key ("xxxx-xxxx" hex, 2^32 choices) and value
  (5 digits), drawn from `seed` under their own stream name: no training document shares them
  (the shipped retrieval data draws its keys from another stream and phrases them otherwise).
- p: the sentence boundary nearest to depth * len(haystack) (0.0 = first token, 1.0 = right
  before the question), so the needle never splits a sentence and sits within one sentence
  of the requested depth.
- question + answer: the answer is `answer_template`'s tokens ("Answer:" then " 48213"); the
  pieces meet at a space, where the pre-tokenizer splits, so they tokenize as the joined text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from data_pipeline.config import DataRecipeConfig, SourceConfig, resolve_path
from data_pipeline.sources import Record, iter_records
from data_pipeline.synth.rng import sub_rng
from data_pipeline.tokenizer import load as load_tokenizer
from data_pipeline.tokenizer import sentence_chunks
from exaone_train.errors import ConfigError, DataError
from exaone_train.eval.niah_config import NiahConfig

# Tokens read per haystack source, as a multiple of the longest length: random start sentences
# then give distinct haystacks while a production corpus is never read whole.
HAYSTACK_READ_FACTOR = 4


@dataclass(frozen=True)
class NiahSample:
    tokens: np.ndarray  # int64 [length]: haystack with needle, question, answer
    answer_start: int  # tokens[answer_start:] is the answer
    needle_start: int  # first token of the needle
    needle_len: int
    haystack_len: int  # tokens of natural text around the needle
    length: int
    depth: float
    index: int  # sample index within its (length, depth) cell
    source: str  # haystack source (language)
    key: str
    value: str

    @property
    def answer(self) -> np.ndarray:
        return self.tokens[self.answer_start:]


@dataclass
class Haystack:
    """One source's text as a stream of tokenized sentences (used cyclically)."""

    name: str
    sentences: list[np.ndarray]

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sentences)


def _find_source(data: DataRecipeConfig, name: str, where: str) -> SourceConfig:
    for src in data.build.sources:
        if src.name == name:
            return src
    raise ConfigError(f"{where}.haystack_sources", name,
                      f"is not one of data.build.sources {[s.name for s in data.build.sources]}")


def read_haystack(src: SourceConfig, tokenizer: Tokenizer, max_tokens: int, nfc: bool = True) -> Haystack:
    """The source's documents, split into sentences (`sentence_chunks`, the SuperBPE splitter)
    and tokenized, until `max_tokens` tokens are read. Documents are joined by a space."""
    sentences: list[np.ndarray] = []
    total = 0
    for rec in iter_records(src):
        if not isinstance(rec, Record):
            continue  # bad records are the data build's business
        text = unicodedata.normalize("NFC", rec.text) if nfc else rec.text
        chunks = [c for c in sentence_chunks(text.strip()) if c.strip()]
        if not chunks:
            continue
        chunks[0] = " " + chunks[0]
        for enc in tokenizer.encode_batch(chunks, add_special_tokens=False):
            if enc.ids:
                sentences.append(np.asarray(enc.ids, dtype=np.int64))
                total += len(enc.ids)
        if total >= max_tokens:
            break
    if not sentences:
        raise DataError(f"NIAH haystack source {src.name!r} ({src.path}) has no text")
    return Haystack(src.name, sentences)


def load_haystacks(cfg: NiahConfig, data: DataRecipeConfig,
                   where: str = "niah") -> tuple[list[Haystack], Tokenizer]:
    """(haystacks in `cfg.haystack_sources` order, the tokenizer) of a recipe's data config."""
    if not cfg.haystack_sources:
        raise ConfigError(f"{where}.haystack_sources", cfg.haystack_sources, "must name a source")
    tokenizer = load_tokenizer(resolve_path(data.build.tokenizer))
    need = HAYSTACK_READ_FACTOR * max(cfg.lengths)
    stacks = [read_haystack(_find_source(data, name, where), tokenizer, need, data.build.nfc)
              for name in cfg.haystack_sources]
    return stacks, tokenizer


def _encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)


def _fill(stack: Haystack, first: int, num_tokens: int) -> tuple[np.ndarray, list[int]]:
    """`num_tokens` tokens of whole sentences from sentence `first` on (cyclically; the last
    sentence cut), and the token offsets where sentences start."""
    parts, starts, total, i = [], [], 0, first
    while total < num_tokens:
        sentence = stack.sentences[i % len(stack.sentences)]
        starts.append(total)
        parts.append(sentence)
        total += len(sentence)
        i += 1
    return np.concatenate(parts)[:num_tokens], starts


def needle_position(starts: Sequence[int], haystack_len: int, depth: float) -> int:
    """The sentence boundary (a sentence start, or the haystack's end) nearest to
    depth * haystack_len; the earlier one on a tie."""
    target = depth * haystack_len
    return min([*starts, haystack_len], key=lambda b: (abs(b - target), b))


def make_sample(cfg: NiahConfig, stacks: list[Haystack], tokenizer: Tokenizer, length: int,
                depth_index: int, index: int, where: str = "niah") -> NiahSample:
    """Sample `index` of the cell (length, cfg.depths[depth_index])."""
    depth = float(cfg.depths[depth_index])
    rng = sub_rng(cfg.seed, "niah", length, depth_index, index)
    key = f"{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}"
    value = str(rng.randint(10_000, 99_999))
    needle = _encode(tokenizer, " " + cfg.needle_template.format(key=key, value=value))
    question = _encode(tokenizer, cfg.question_template.format(key=key, value=value))
    answer = _encode(tokenizer, cfg.answer_template.format(key=key, value=value))
    haystack_len = length - len(needle) - len(question) - len(answer)
    if haystack_len < 1:
        raise ConfigError(f"{where}.lengths", length,
                          f"too short: needle, question and answer alone take "
                          f"{length - haystack_len} tokens")
    stack = stacks[(depth_index * cfg.samples_per_cell + index) % len(stacks)]
    hay, starts = _fill(stack, rng.randrange(len(stack.sentences)), haystack_len)
    pos = needle_position(starts, haystack_len, depth)
    tokens = np.concatenate([hay[:pos], needle, hay[pos:], question, answer])
    assert len(tokens) == length
    return NiahSample(tokens=tokens, answer_start=length - len(answer), needle_start=pos,
                      needle_len=len(needle), haystack_len=haystack_len, length=length,
                      depth=depth, index=index, source=stack.name, key=key, value=value)


def make_samples(cfg: NiahConfig, stacks: list[Haystack], tokenizer: Tokenizer, length: int,
                 where: str = "niah") -> list[NiahSample]:
    """Every sample of one length, cell by cell (depth-major, then sample index)."""
    return [make_sample(cfg, stacks, tokenizer, length, d, k, where)
            for d in range(len(cfg.depths)) for k in range(cfg.samples_per_cell)]
