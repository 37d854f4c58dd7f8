"""The packed-sample index at corpus scale: the compiled packer builds exactly what the plain
Python algorithm builds, and the on-disk cache is built once, mapped by every reader and
rebuilt (with a warning) when stale or corrupt."""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import BlendComponent, StageDataConfig, build_stage_dataset
from data_pipeline import dataset as dataset_module
from data_pipeline.native import permutation
from data_pipeline.packing import DocumentTable, pack, pack_reference
from data_pipeline.shards import ShardWriter
from exaone_train.errors import DataError

SEQ = 48
FIELDS = ("shard", "doc", "start", "length", "sample_ptr", "routed_documents",
          "split_documents", "padding_tokens")


def _random_table(rng: np.random.Generator, n: int) -> DocumentTable:
    lengths = np.minimum(rng.lognormal(2.5, 1.3, n).astype(np.int64), 8 * SEQ)
    lengths[rng.random(n) < 0.03] = 0  # empty documents are packed too
    return DocumentTable(rng.integers(0, 3, n).astype(np.int32),
                         rng.integers(0, 10**6, n).astype(np.int64), lengths, ("a", "b", "c"))


def test_compiled_packing_equals_the_python_algorithm_on_random_inputs():
    rng = np.random.default_rng(12)
    for trial in range(120):
        table = _random_table(rng, int(rng.integers(0, 500)))
        order = rng.permutation(len(table.doc))
        seq, bins = int(rng.integers(2, 2 * SEQ)), int(rng.integers(1, 80))
        for policy in ("split", "route"):
            new, old = (f(table, order, seq, policy, bins) for f in (pack, pack_reference))
            for f in FIELDS:
                a, b = getattr(new, f), getattr(old, f)
                assert np.asarray(a).dtype == np.asarray(b).dtype, (trial, policy, f)
                assert np.array_equal(a, b), (trial, policy, f, seq, bins)


def test_compiled_packing_raises_the_same_error_for_the_same_first_long_document():
    table = DocumentTable(np.zeros(5, np.int32), np.arange(5), np.array([3, 90, 4, 70, 2]), ("s",))
    order = np.array([4, 3, 2, 1, 0])
    for f in (pack, pack_reference):
        with pytest.raises(DataError, match=r"s\.bin: document 3 has 70 tokens"):
            f(table, order, SEQ, "error")


def _write_shard(prefix: Path, lengths: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = ShardWriter(prefix, np.uint16)
    w.add_batch(rng.integers(3, 4096, sum(lengths)).astype(np.uint16), np.array(lengths, np.int32))
    w.close()


def _stage(prefix: Path, cache: str | None = None) -> StageDataConfig:
    return StageDataConfig(name="s", seq_length=SEQ, long_doc_policy="split", index_cache_dir=cache,
                           blend=[BlendComponent(name="c", prefix=str(prefix), weight=1.0)])


def _samples(ds, n: int = 40) -> list[bytes]:
    return [ds[i].tokens.tobytes() for i in range(n)]


@pytest.fixture()
def shard(tmp_path) -> Path:
    lengths = np.random.default_rng(3).integers(1, 3 * SEQ, 400).tolist()
    _write_shard(tmp_path / "c", lengths, 3)
    return tmp_path / "c"


def test_cache_is_written_next_to_the_shards_and_read_back_identically(shard, caplog):
    uncached = _samples(build_stage_dataset(_stage(shard, cache=""), seed=5))
    first = build_stage_dataset(_stage(shard), seed=5)
    entry = shard.parent / "index-cache" / "s.c.seed5.packed"
    assert (entry / "meta.json").is_file() and (entry / "sample_ptr.npy").is_file()
    mtime = (entry / "doc.npy").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        again = build_stage_dataset(_stage(shard), seed=5)
    assert isinstance(again.components[0].index.doc, np.memmap)
    assert (entry / "doc.npy").stat().st_mtime_ns == mtime and not caplog.text
    assert _samples(first) == _samples(again) == uncached
    assert again.fingerprint() == first.fingerprint()


def test_stale_and_corrupt_caches_are_rebuilt_with_a_warning(shard, caplog):
    build_stage_dataset(_stage(shard), seed=5)
    entry = shard.parent / "index-cache" / "s.c.seed5.packed"
    with open(entry / "doc.npy", "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING):
        ds = build_stage_dataset(_stage(shard), seed=5)
    assert "is corrupt (doc.npy" in caplog.text
    assert _samples(ds) == _samples(build_stage_dataset(_stage(shard, cache=""), seed=5))
    caplog.clear()
    _write_shard(shard, np.random.default_rng(4).integers(1, 3 * SEQ, 300).tolist(), 4)
    with caplog.at_level(logging.WARNING):
        ds = build_stage_dataset(_stage(shard), seed=5)
    assert "is stale" in caplog.text
    assert _samples(ds) == _samples(build_stage_dataset(_stage(shard, cache=""), seed=5))


def _open_and_read(prefix: str, out: str) -> None:
    Path(out).write_bytes(b"".join(_samples(build_stage_dataset(_stage(Path(prefix)), seed=5))))


def test_concurrent_readers_build_the_cache_once_and_read_the_same_samples(shard, monkeypatch):
    builds = shard.parent / "builds.log"
    real_pack = dataset_module.pack

    def counting_pack(*args, **kwargs):
        with open(builds, "a") as f:
            f.write("built\n")
        return real_pack(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "pack", counting_pack)  # inherited by forked readers
    ctx = mp.get_context("fork")
    outs = [shard.parent / f"rank{r}.bin" for r in range(3)]
    procs = [ctx.Process(target=_open_and_read, args=(str(shard), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert builds.read_text() == "built\n"
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_whole_shard_tables_pack_as_the_explicit_table_of_the_same_rows():
    """`DocumentTable.of_shards` (shard/document ids from shard offsets, in C) packs exactly
    what the reference packs from per-row shard and document arrays."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        sizes = rng.integers(0, 60, int(rng.integers(1, 6))).tolist()
        parts = [_random_table(rng, n).length.astype(np.int32) for n in sizes]
        names = tuple(f"s{i}" for i in range(len(sizes)))
        table = DocumentTable.of_shards(parts, names)
        explicit = DocumentTable(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes),
                                 np.concatenate([np.arange(n) for n in sizes]).astype(np.int64),
                                 table.length.astype(np.int64), names)
        order = rng.permutation(sum(sizes))
        seq, bins = int(rng.integers(2, 2 * SEQ)), int(rng.integers(1, 70))
        new, old = pack(table, order, seq, "split", bins), pack_reference(explicit, order, seq, "split", bins)
        for f in FIELDS:
            assert np.array_equal(getattr(new, f), getattr(old, f)), (trial, f)
    with pytest.raises(DataError, match=r"s1\.bin: document 2 has 200 tokens"):
        pack(DocumentTable.of_shards([np.array([1, 2], np.int32), np.array([3, 4, 200], np.int32)],
                                     ("s0", "s1")), np.arange(5), SEQ, "error")


def test_prefetching_shuffle_is_numpys_permutation_and_leaves_the_same_generator_state():
    for n in (0, 1, 2, 3, 50, 4097, 100_003):
        for seed in range(2):
            ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
            ours.integers(0, 9, dtype=np.uint32), theirs.integers(0, 9, dtype=np.uint32)  # half-used word
            got, want = permutation(ours, n), theirs.permutation(n)
            assert got.dtype == want.dtype and np.array_equal(got, want), (n, seed)
            assert ours.integers(0, 2**63, 4).tolist() == theirs.integers(0, 2**63, 4).tolist()
