"""Train and load byte-level BPE tokenizers (HF `tokenizers`), with a SuperBPE option.

Plain BPE: NFC normalizer, GPT-2-style byte-level pre-tokenization (merges stay inside
words), special tokens at configurable ids (the slots below the largest special id that no
special token claims are filled with `<|reserved_N|>`), vocab padded with reserved tokens to a
multiple of `vocab_pad_multiple`.

SuperBPE (Liu et al., 2025): stage 1 trains ordinary BPE up to a transition vocab size; stage
2 continues learning merges with whitespace pre-tokenization switched off (chunks are
sentences), so frequent multi-word units become single "superword" tokens. Stage 2 runs on the
stage-1 token sequences, each token mapped to one private-use character, so the same Rust BPE
trainer learns merges of whole stage-1 tokens; those merges are appended after the stage-1
merges. At encode time the final tokenizer splits only at sentence ends; because stage-1
merges rank first and never join across a word start, it reproduces stage-1 segmentation and
then applies the superword merges.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from exaone_train.errors import ConfigError, DataError

SENTENCE_END = r"[.!?。！？\n]+"
_PUA = 0xF0000  # Supplementary Private Use Area-A: 65,534 code points for stage-1 ids


@dataclass
class TokenizerTrainConfig:
    """What `exaone-train data train-tokenizer` trains."""

    vocab_size: int = 4096
    vocab_pad_multiple: int = 128
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2  # K-EXAONE: bos 1, eos 53, pad 0
    pad_token: str = "<pad>"
    bos_token: str = "<bos>"
    eos_token: str = "<eos>"
    min_frequency: int = 2
    superbpe: bool = False
    superbpe_transition: float = 0.8  # fraction of the vocab learned before stage 2
    superbpe_max_tokens_per_superword: int = 6  # stage-1 tokens joined at most


def special_tokens(cfg: TokenizerTrainConfig) -> list[str]:
    """Special tokens in id order: pad/bos/eos at their ids, reserved fillers elsewhere."""
    ids = {"pad_id": cfg.pad_id, "bos_id": cfg.bos_id, "eos_id": cfg.eos_id}
    if len(set(ids.values())) != 3 or min(ids.values()) < 0:
        raise ConfigError("tokenizer." + "/".join(ids), tuple(ids.values()),
                          "special ids must be distinct and non-negative")
    slots = [f"<|reserved_{i}|>" for i in range(max(ids.values()) + 1)]
    slots[cfg.pad_id], slots[cfg.bos_id], slots[cfg.eos_id] = (cfg.pad_token, cfg.bos_token,
                                                              cfg.eos_token)
    return slots


def _target_vocab(cfg: TokenizerTrainConfig) -> int:
    if cfg.vocab_size % cfg.vocab_pad_multiple:
        raise ConfigError("tokenizer.vocab_size", cfg.vocab_size,
                          f"must be a multiple of vocab_pad_multiple={cfg.vocab_pad_multiple}")
    if cfg.vocab_size <= 256 + len(special_tokens(cfg)):
        raise ConfigError("tokenizer.vocab_size", cfg.vocab_size, "must exceed 256 bytes + specials")
    return cfg.vocab_size


def _byte_level_bpe(pre_tokenizer: pre_tokenizers.PreTokenizer) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], cfg: TokenizerTrainConfig, vocab_size: int | None = None) -> Tokenizer:
    """Plain byte-level BPE with `vocab_size` (default cfg.vocab_size) entries."""
    size = vocab_size or _target_vocab(cfg)
    tok = _byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=cfg.min_frequency,
                                  special_tokens=special_tokens(cfg), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def sentence_chunks(text: str) -> list[str]:
    """Split like the SuperBPE pre-tokenizer: after each run of sentence-end characters."""
    tok = pre_tokenizers.Split(Regex(SENTENCE_END), behavior="merged_with_previous")
    return [piece for piece, _ in tok.pre_tokenize_str(text)]


def _stage2_merges(stage1: Tokenizer, texts: list[str], cfg: TokenizerTrainConfig,
                   new_tokens: int) -> list[tuple[str, str]]:
    """Merges of whole stage-1 tokens learned across whitespace, in rank order."""
    id_to_tok = {i: t for t, i in stage1.get_vocab().items()}
    chunks = [c for t in texts for c in sentence_chunks(stage1.normalizer.normalize_str(t))]
    mapped = ["".join(chr(_PUA + i) for i in enc.ids)
              for enc in stage1.encode_batch(chunks, add_special_tokens=False)]
    alphabet = sorted({ch for m in mapped for ch in m})
    inner = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + new_tokens, show_progress=False,
                                  min_frequency=cfg.min_frequency, initial_alphabet=alphabet,
                                  max_token_length=cfg.superbpe_max_tokens_per_superword)
    inner.train_from_iterator(mapped, trainer)
    merges = json.loads(inner.to_str())["model"]["merges"]

    def unmap(s: str) -> str:
        return "".join(id_to_tok[ord(ch) - _PUA] for ch in s)

    return [(unmap(a), unmap(b)) for a, b in (m if isinstance(m, list) else m.split(" ")
                                              for m in merges)]


def train_superbpe(texts: Iterable[str], cfg: TokenizerTrainConfig) -> Tokenizer:
    """Two-stage SuperBPE tokenizer with exactly `cfg.vocab_size` entries."""
    size, texts = _target_vocab(cfg), list(texts)
    transition = int(size * cfg.superbpe_transition)
    stage1 = train_bpe(texts, cfg, vocab_size=transition)
    model = json.loads(stage1.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for a, b in _stage2_merges(stage1, texts, cfg, size - len(vocab)):
        if len(vocab) >= size:
            break
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    tok = _byte_level_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SENTENCE_END), behavior="merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    tok.model = models.BPE(vocab=vocab, merges=merges)
    return tok


def finalize(tok: Tokenizer, cfg: TokenizerTrainConfig) -> Tokenizer:
    """Register specials and pad the vocab with reserved tokens to exactly cfg.vocab_size."""
    specials = special_tokens(cfg)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    n = tok.get_vocab_size()
    if n > cfg.vocab_size:
        raise DataError(f"trained tokenizer has {n} entries, more than vocab_size={cfg.vocab_size}")
    pad = [f"<|reserved_{i}|>" for i in range(len(specials), len(specials) + cfg.vocab_size - n)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in pad])
    for name, i in (("pad", cfg.pad_id), ("bos", cfg.bos_id), ("eos", cfg.eos_id)):
        token = getattr(cfg, f"{name}_token")
        if tok.token_to_id(token) != i:
            raise DataError(f"tokenizer: {token} got id {tok.token_to_id(token)}, expected {i}")
    return tok


def bytes_per_token(tok: Tokenizer, texts: list[str]) -> float:
    """UTF-8 bytes of `texts` divided by the tokens `tok` makes of them."""
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    return sum(len(t.encode()) for t in texts) / max(tokens, 1)


def save(tok: Tokenizer, out_dir: str | Path, cfg: TokenizerTrainConfig) -> Path:
    """Write tokenizer.json plus the HF config files `AutoTokenizer` needs; returns the json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    hf = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": cfg.bos_token,
          "eos_token": cfg.eos_token, "pad_token": cfg.pad_token,
          "model_max_length": 1_000_000, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(hf, indent=2) + "\n")
    specials = {"bos_token": cfg.bos_token, "eos_token": cfg.eos_token, "pad_token": cfg.pad_token}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out / "tokenizer.json"


def load(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a directory holding one."""
    p = Path(path)
    p = p / "tokenizer.json" if p.is_dir() else p
    if not p.is_file():
        raise DataError(f"tokenizer file not found: {p}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"tokenizer file {p} could not be loaded: {e}") from None


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def tokenizer_hash(path: str | Path) -> str:
    """Identity of a tokenizer: sha256 of its tokenizer.json."""
    p = Path(path)
    return file_sha256(p / "tokenizer.json" if p.is_dir() else p)


def iter_corpus_texts(paths: Iterable[str | Path], text_field: str = "text") -> Iterator[str]:
    """Texts of jsonl files (the shipped corpus), in file order."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)[text_field]


def train_tokenizer(corpus_paths: list[str | Path], out_dir: str | Path,
                    cfg: TokenizerTrainConfig, text_field: str = "text") -> dict:
    """Train (plain, or SuperBPE when cfg.superbpe) on every 10th-document-held-out split of
    the corpus, save the result to `out_dir`, and report bytes per token on the held-out
    documents for plain BPE and, with SuperBPE, for both."""
    texts = list(iter_corpus_texts(corpus_paths, text_field))
    train = [t for i, t in enumerate(texts) if i % 10]
    held_out = [t for i, t in enumerate(texts) if i % 10 == 0]
    plain = finalize(train_bpe(train, cfg), cfg)
    report = {"vocab_size": cfg.vocab_size, "train_documents": len(train),
              "held_out_documents": len(held_out),
              "bytes_per_token_bpe": round(bytes_per_token(plain, held_out), 4)}
    chosen = plain
    if cfg.superbpe:
        chosen = finalize(train_superbpe(train, cfg), cfg)
        report["bytes_per_token_superbpe"] = round(bytes_per_token(chosen, held_out), 4)
        report["superbpe_transition"] = cfg.superbpe_transition
    path = save(chosen, out_dir, cfg)
    report.update(path=str(path), sha256=tokenizer_hash(path), superbpe=cfg.superbpe)
    return report
