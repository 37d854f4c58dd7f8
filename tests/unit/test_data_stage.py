"""Packing, blending and sampling: exact proportions, whole documents, world-size-free order."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import BlendComponent, StageDataConfig, build_stage_dataset
from data_pipeline.blend import BlendSchedule
from data_pipeline.shards import ShardWriter, open_shard
from exaone_train.errors import ConfigError, DataError

SEQ = 64


def _write(prefix: Path, lengths: list[int], seed: int) -> list[np.ndarray]:
    """A shard of random documents (EOS=2 last) with the given lengths; returns them."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(3, 4096, n - 1), 2).astype(np.uint16) for n in lengths]
    w = ShardWriter(prefix, np.uint16)
    w.add_batch(np.concatenate(docs), np.array(lengths, dtype=np.int32))
    w.close()
    return docs


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, tuple[Path, list[np.ndarray]]]:
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(("a", "b", "c")):
        lengths = rng.integers(4, SEQ // 2, 300 + 100 * i).tolist()
        out[name] = (d / name, _write(d / name, lengths, i))
    long_lengths = [10, SEQ + 1, SEQ + 2, 3 * SEQ + 5, 20, SEQ // 2]
    out["long"] = (d / "long", _write(d / "long", long_lengths, 9))
    return out


def _stage(shards, weights: dict[str, float], **kw) -> StageDataConfig:
    blend = [BlendComponent(name=n, prefix=str(shards[n][0]), weight=w) for n, w in weights.items()]
    return StageDataConfig(name=kw.pop("name", "s1"), seq_length=kw.pop("seq_length", SEQ),
                           blend=blend, **kw)


def test_blend_proportions_within_one_percent_over_10000_samples(shards):
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    ds = build_stage_dataset(_stage(shards, weights, blend_window_samples=997), seed=7)
    counts: dict[str, int] = dict.fromkeys(weights, 0)
    for i in range(10_000):
        counts[ds.component_of(i)[0]] += 1
    for name, w in weights.items():
        assert abs(counts[name] / 10_000 - w) < 0.01, counts
    assert {ds[i].source for i in range(50)} == set(weights)


def test_blend_schedule_is_exact_per_window_and_enumerates_each_component():
    sched = BlendSchedule([3.0, 1.0, 1.0], window=10, seed=1, key="k")
    comps = [sched.lookup(i) for i in range(1000)]
    for k in range(100):
        window = [c for c, _ in comps[10 * k:10 * k + 10]]
        assert [window.count(c) for c in range(3)] == [6, 2, 2]
    for c in range(3):
        locals_ = [j for cc, j in comps if cc == c]
        assert locals_ == list(range(len(locals_)))  # each component read in order, no gaps
        assert all(sched.global_index_of(c, j) < 1000 and comps[sched.global_index_of(c, j)] == (c, j)
                   for j in locals_[:20])


def _sequence(ds, steps: int, gbs: int, dp: int, start_step: int = 0) -> list[tuple]:
    out = []
    for step in range(start_step, start_step + steps):
        batch = ds.global_batch_indices(step, gbs)
        for r in range(dp):
            for i in ds.rank_slice(batch, r, dp):
                s = ds[i]
                out.append((s.source, s.tokens.tobytes()))
        ds.advance(gbs)
    return out


def test_global_sequence_is_identical_for_dp_1_2_4(shards):
    cfg = _stage(shards, {"a": 0.6, "b": 0.4})
    seqs = [_sequence(build_stage_dataset(cfg, seed=3), steps=6, gbs=8, dp=d) for d in (1, 2, 4)]
    assert seqs[0] == seqs[1] == seqs[2]
    assert len(set(seqs[0])) > 40  # real, varied samples
    other_seed = _sequence(build_stage_dataset(cfg, seed=4), steps=6, gbs=8, dp=1)
    assert other_seed != seqs[0]


def test_sampler_state_restore_continues_the_same_sequence_under_another_dp(shards):
    cfg = _stage(shards, {"a": 0.6, "b": 0.4})
    full = _sequence(build_stage_dataset(cfg, seed=3), steps=10, gbs=8, dp=1)
    first = build_stage_dataset(cfg, seed=3)
    head = _sequence(first, steps=4, gbs=8, dp=2)
    state = first.state_dict()
    assert state["consumed_samples"] == 32
    resumed = build_stage_dataset(cfg, seed=3)
    resumed.load_state_dict(state)
    step = resumed.consumed_samples // 8
    tail = _sequence(resumed, steps=6, gbs=8, dp=4, start_step=step)
    assert head + tail == full


def test_sampler_state_of_other_data_is_refused(shards):
    ds = build_stage_dataset(_stage(shards, {"a": 0.6, "b": 0.4}), seed=3)
    other = build_stage_dataset(_stage(shards, {"a": 0.5, "b": 0.5}), seed=3)
    with pytest.raises(DataError, match="fingerprint"):
        other.load_state_dict(ds.state_dict())


def _documents(s) -> list[np.ndarray]:
    """The packed documents of a sample, recovered from its public fields alone."""
    real = int(s.loss_mask.sum()) + 1  # tokens whose label (or themselves) is real
    ids = np.append(s.document_ids, s.document_ids[-1])  # the last token joins its neighbour
    return [s.tokens[:real][ids[:real] == k] for k in np.unique(ids[:real])]


def _all_pieces(ds) -> list[tuple[object, list[np.ndarray]]]:
    """(sample, its documents) for every packed sample of component 0, in packed order."""
    comp = ds.components[0]
    out = []
    for p in range(comp.num_samples):
        s = ds._assemble(comp.pieces(p), comp.name, p)
        out.append((s, _documents(s)))
    return out


def test_packing_keeps_every_document_whole_exactly_once_per_epoch(shards):
    _, docs = shards["a"]
    ds = build_stage_dataset(_stage(shards, {"a": 1.0}), seed=5)
    seen = []
    for s, packed in _all_pieces(ds):
        real = int(s.loss_mask.sum()) + 1
        assert (s.tokens[real:] == 0).all()  # pad_id after the last document
        seen += [d.tobytes() for d in packed]
    assert sorted(seen) == sorted(d.astype(np.int64).tobytes() for d in docs)
    assert ds.report()["a"]["padding_fraction"] < 0.05
    assert {ds[i].tokens.tobytes() for i in range(ds.num_samples)} == \
        {s.tokens.tobytes() for s, _ in _all_pieces(ds)}  # one epoch reads every sample once


def test_position_and_document_ids_follow_document_boundaries(shards):
    reset = build_stage_dataset(_stage(shards, {"b": 1.0}), seed=5)
    plain = build_stage_dataset(_stage(shards, {"b": 1.0}, reset_position_ids=False), seed=5)
    s, t = reset[3], plain[3]
    assert s.tokens.shape == (SEQ + 1,) and s.tokens.dtype == np.int64
    assert s.loss_mask.dtype == np.float32 and s.document_ids.dtype == np.int32
    assert (s.tokens == t.tokens).all() and (t.position_ids == np.arange(SEQ)).all()
    for i in range(1, SEQ):
        same = s.document_ids[i] == s.document_ids[i - 1]
        assert s.position_ids[i] == (s.position_ids[i - 1] + 1 if same else 0)
        if not same and s.document_ids[i] < s.document_ids.max():
            assert s.tokens[i - 1] == 2  # a document ends with EOS right before the next starts


def test_long_document_error_names_the_shard(shards):
    with pytest.raises(DataError, match=r"long\.bin: document (2 has 66|3 has 197) tokens"):
        build_stage_dataset(_stage(shards, {"long": 1.0}, long_doc_policy="error"), seed=0)


def test_long_documents_routed_are_left_out_never_cut(shards):
    _, docs = shards["long"]
    ds = build_stage_dataset(_stage(shards, {"long": 1.0}, long_doc_policy="route"), seed=0)
    assert ds.report()["long"]["routed_documents"] == 2
    emitted = sorted(d.tobytes() for _, ds_docs in _all_pieces(ds) for d in ds_docs)
    assert emitted == sorted(d.astype(np.int64).tobytes() for d in docs if len(d) <= SEQ + 1)
    longer = build_stage_dataset(_stage(shards, {"long": 1.0}, seq_length=4 * SEQ,
                                        long_doc_policy="error"), seed=0)
    whole = sorted(d.tobytes() for _, ds_docs in _all_pieces(longer) for d in ds_docs)
    assert whole == sorted(d.astype(np.int64).tobytes() for d in docs)


def test_long_documents_split_only_when_asked_and_reassemble(shards):
    _, docs = shards["long"]
    ds = build_stage_dataset(_stage(shards, {"long": 1.0}, long_doc_policy="split",
                                    shuffle=False), seed=0)
    assert ds.report()["long"]["split_documents"] == 2
    comp = ds.components[0]
    ix = comp.index
    for d, doc in enumerate(docs):
        pieces = np.flatnonzero(ix.doc == d)
        got = np.concatenate([comp.shards[0].get(d, offset=int(ix.start[p]), length=int(ix.length[p]))
                              for p in pieces[np.argsort(ix.start[pieces])]])
        assert (got == doc).all() and (len(pieces) > 1) == (len(doc) > SEQ + 1)


def test_small_dataset_repeats_by_epochs_and_reports_it(shards, caplog):
    ds = build_stage_dataset(_stage(shards, {"a": 0.5, "c": 0.5}), seed=1)
    n = ds.num_samples
    first = [ds[i].tokens.tobytes() for i in range(n)]
    assert max(ds.epochs(n).values()) == 1.0 and max(ds.epochs(n + 1).values()) > 1.0
    with caplog.at_level(logging.WARNING):
        beyond = [ds[i].tokens.tobytes() for i in range(n, 3 * n)]
    assert "repeats: epoch 1" in caplog.text
    assert max(ds.epochs(3 * n).values()) > 1.0
    assert set(beyond) & set(first)  # epoch 2 re-reads epoch-1 samples, in a new order


def test_bad_stage_configs_are_config_errors(shards, tmp_path):
    with pytest.raises(ConfigError, match="long_doc_policy"):
        build_stage_dataset(_stage(shards, {"a": 1.0}, long_doc_policy="truncate"))
    with pytest.raises(ConfigError, match="weight"):
        build_stage_dataset(_stage(shards, {"a": 1.0, "b": 0.0}))
    with pytest.raises(ConfigError, match="prefix"):
        build_stage_dataset(StageDataConfig(seq_length=SEQ, blend=[
            BlendComponent(name="x", prefix=str(tmp_path / "nothing"), weight=1.0)]))
    with pytest.raises(ConfigError, match="divisible"):
        build_stage_dataset(_stage(shards, {"a": 1.0})).rank_slice(range(10), 0, 4)


def test_shard_reads_match_megatron_reader(shards):
    prefix, docs = shards["c"]
    ds = open_shard(prefix)
    assert all((ds[i] == d).all() for i, d in enumerate(docs))
