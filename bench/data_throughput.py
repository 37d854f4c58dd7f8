"""Data pipeline throughput on this machine, in one run, same corpus and tokenizer.

1. Build: our `data build` (reader + NFC + worker-process tokenization + megatron-core shard
   writer) against a baseline of `datasets.load_dataset("json")` + `Dataset.map(tokenizer,
   batched=True)` (HF `PreTrainedTokenizerFast` on the same tokenizer.json) + writing the same
   shards with megatron-core's `IndexedDatasetBuilder`, one document at a time. Both outputs
   are checked to be identical before a ratio is printed.
2. Read: samples/s of our `StageDataset` against megatron-core's `GPTDataset` on the same
   shards and sequence length (both with reset position ids, no attention mask materialised).

Run: `python bench/data_throughput.py [--copies 4] [--workers 2]` from the repo root.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TOKENIZER = ROOT / "data" / "tokenizer" / "tokenizer.json"


def make_corpus(tmp: Path, copies: int) -> Path:
    """The shipped corpus concatenated `copies` times into one jsonl file."""
    blob = b"".join(p.read_bytes() for p in sorted((ROOT / "data" / "corpus").glob("*.jsonl")))
    path = tmp / "corpus.jsonl"
    path.write_bytes(blob * copies)
    return path


def ours(corpus: Path, out: Path, workers: int) -> tuple[float, int]:
    from data_pipeline.build import build
    from data_pipeline.config import BuildConfig, SourceConfig

    cfg = BuildConfig(sources=[SourceConfig(name="corpus", path=str(corpus), language_field="lang")],
                      tokenizer=str(TOKENIZER), output_dir=str(out), num_workers=workers,
                      progress=False)
    t0 = time.perf_counter()
    manifest = build(cfg)
    return time.perf_counter() - t0, manifest["totals"]["tokens"]


def baseline(corpus: Path, out: Path, cache: Path) -> tuple[float, int]:
    import datasets
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import PreTrainedTokenizerFast

    datasets.disable_progress_bars()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))
    eos = tok.convert_tokens_to_ids("<eos>")
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(cache))
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=ds.column_names)
    builder = IndexedDatasetBuilder(str(out / "baseline.bin"), dtype=np.uint16)
    tokens = 0
    for ids in ds["input_ids"]:
        doc = np.array(ids + [eos], dtype=np.uint16)
        builder.add_document(doc, [len(doc)])
        tokens += len(doc)
    builder.finalize(str(out / "baseline.idx"))
    return time.perf_counter() - t0, tokens


def same_shards(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{s}").read_bytes() == Path(f"{b}{s}").read_bytes() for s in (".bin", ".idx"))


def read_ours(prefix: Path, seq: int, n: int) -> float:
    from data_pipeline import BlendComponent, StageDataConfig, build_stage_dataset

    cfg = StageDataConfig(name="bench", seq_length=seq, long_doc_policy="split",
                          blend=[BlendComponent(name="c", prefix=str(prefix), weight=1.0)])
    ds = build_stage_dataset(cfg, seed=1234)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t0)


def read_megatron(prefix: Path, seq: int, n: int, cache: Path) -> float:
    from types import SimpleNamespace

    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    tok = SimpleNamespace(eod=2, pad=0, vocab_size=4096, unique_identifiers={"bench": "tok"})
    cfg = GPTDatasetConfig(random_seed=1234, sequence_length=seq, blend=None,
                           blend_per_split=None, split="100,0,0", path_to_cache=str(cache),
                           tokenizer=tok, reset_position_ids=True, reset_attention_mask=False,
                           eod_mask_loss=False, create_attention_mask=False, mid_level_dataset_surplus=0.005)
    idx = IndexedDataset(str(prefix), multimodal=False, mmap=True)
    ds = GPTDataset(idx, str(prefix), np.arange(len(idx), dtype=np.int32), n, Split.train, cfg)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4, help="shipped corpus repeated this many times")
    ap.add_argument("--workers", type=int, default=0,
                    help="build.num_workers (0: in-process, the tokenizer's own threads)")
    ap.add_argument("--repeats", type=int, default=2, help="best of N, runs alternating")
    ap.add_argument("--seq-length", type=int, default=1024)
    ap.add_argument("--read-samples", type=int, default=3000)
    args = ap.parse_args()
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import time is not build time)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus = make_corpus(tmp, args.copies)
        mb = corpus.stat().st_size / 1e6
        t_base = t_ours = float("inf")
        for r in range(args.repeats):  # alternate, so load from other processes hits both
            t, n_base = baseline(corpus, tmp, tmp / f"hf_cache{r}")
            t_base = min(t_base, t)
            t, n_ours = ours(corpus, tmp / f"ours{r}", args.workers)
            t_ours = min(t_ours, t)
        assert n_base == n_ours and same_shards(tmp / "baseline", tmp / "ours0" / "corpus_00000"), \
            "our shards differ from the baseline's"
        print(f"build: corpus {mb:.1f} MB, {n_ours:,} tokens, {os.cpu_count()} CPU cores, "
              f"best of {args.repeats}")
        print(f"  baseline datasets.map + IndexedDatasetBuilder: {n_base / t_base:12,.0f} tokens/s ({t_base:.2f} s)")
        print(f"  ours (data build, num_workers={args.workers}):        {n_ours / t_ours:12,.0f} tokens/s ({t_ours:.2f} s)")
        print(f"  speed-up: {t_base / t_ours:.2f}x (target >= 1.5x); shards byte-identical")
        prefix = tmp / "ours0" / "corpus_00000"
        r_meg = read_megatron(prefix, args.seq_length, args.read_samples, tmp / "gpt_cache")
        r_ours = read_ours(prefix, args.seq_length, args.read_samples)
        print(f"read: seq_length {args.seq_length}, {args.read_samples} samples")
        print(f"  megatron-core GPTDataset: {r_meg:10,.0f} samples/s")
        print(f"  ours StageDataset:        {r_ours:10,.0f} samples/s  ({r_ours / r_meg:.2f}x)")


if __name__ == "__main__":
    main()
