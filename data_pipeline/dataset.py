"""`StageDataset`: one stage's blended, packed samples, addressed by global sample index.

sample(i) = component c and its local sample j from the blend schedule (seed, stage, i);
j -> epoch e = j // N_c and packed sample perm_{c,e}[j % N_c]; the packed sample's pieces are
read from the shards with megatron-core's `IndexedDataset`. Packed samples and epoch
permutations are built once per (stage, component, seed, shards, packing settings) and cached
next to the shards (`index_cache`): every later start, and every rank, maps them. Nothing depends on the number of
data-parallel ranks, so any layout reads the same global sequence. The only state is the
number of samples consumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from data_pipeline.blend import BlendSchedule
from data_pipeline.build import read_manifest
from data_pipeline.config import BlendComponent, StageDataConfig, resolve_path, validate_stage
from data_pipeline.index_cache import load_or_build
from data_pipeline.native import permutation
from data_pipeline.packing import DocumentTable, PackedIndex, pack
from data_pipeline.shards import open_shard
from data_pipeline.synth.rng import derive_seed
from exaone_train.errors import ConfigError, DataError

log = logging.getLogger(__name__)
INDEX_FORMAT = "exaone-train-packed-index/1"
PACKED_ARRAYS = ("shard", "doc", "start", "length", "sample_ptr")
PACKED_COUNTS = ("routed_documents", "split_documents", "padding_tokens")


@dataclass
class Sample:
    """One training sample of `seq_length` positions.

    tokens: int64 [seq_length + 1] (inputs tokens[:-1], labels tokens[1:]), pad_id after the
    last document. loss_mask: float32 [seq_length], 0 where the label is padding.
    document_ids: int32 [seq_length], 0..k-1 for the k packed documents, k for the padding tail
    (contiguous segments, usable as cu_seqlens). position_ids: int64 [seq_length], restarting
    at 0 at each document when the stage resets positions, else arange.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    document_ids: np.ndarray
    position_ids: np.ndarray
    source: str
    global_index: int


def _numbered(prefix: Path) -> list[Path]:
    return sorted(Path(str(p)[:-4]) for p in prefix.parent.glob(f"{prefix.name}_[0-9][0-9][0-9][0-9][0-9].idx"))


def resolve_shards(comp: BlendComponent, where: str) -> list[Path]:
    """Shard prefixes of a blend component (see `BlendComponent`)."""
    p = resolve_path(comp.prefix)
    if comp.sources is not None or (p.is_dir() and (p / "manifest.json").is_file()):
        manifest = read_manifest(p) or {}
        entries = manifest.get("sources", {})
        names = list(comp.sources) if comp.sources is not None else list(entries)
        missing = [n for n in names if n not in entries]
        if missing or not names:
            raise ConfigError(f"{where}.sources", names, f"not built in {p}/manifest.json "
                              f"(built: {sorted(entries)}); run `exaone-train data build`")
        return [p / s["prefix"] for n in names for s in entries[n]["shards"]]
    if Path(f"{p}.idx").is_file():
        return [p]
    shards = _numbered(p) or (sorted(Path(str(f)[:-4]) for f in p.glob("*.idx")) if p.is_dir() else [])
    if not shards:
        raise ConfigError(f"{where}.prefix", comp.prefix, f"no .bin/.idx shards at {p}; run "
                          "`exaone-train data build`")
    return shards


def _cache_dir(cfg: StageDataConfig, first_shard: Path) -> Path | None:
    """Where a component's indices are cached: `index_cache_dir`, else next to its shards."""
    if cfg.index_cache_dir == "":
        return None
    return resolve_path(cfg.index_cache_dir) if cfg.index_cache_dir else first_shard.parent / "index-cache"


def _lengths_hash(shard) -> str:
    """Hash of a shard's document lengths: all that packing reads from it (sha256: with the
    CPU's SHA instructions the fastest hashlib digest, ~2.5x blake2b)."""
    return hashlib.sha256(np.ascontiguousarray(shard.sequence_lengths).data).hexdigest()[:32]


class _Component:
    """One blend component: its shards and packed samples (cached next to the shards)."""

    def __init__(self, comp: BlendComponent, cfg: StageDataConfig, seed: int, where: str) -> None:
        self.name, self.seed, self.stage = comp.name, seed, cfg.name
        self.prefixes = resolve_shards(comp, where)
        self.shards = [open_shard(p) for p in self.prefixes]
        self.cache_dir = _cache_dir(cfg, self.prefixes[0])
        self._inputs = {"format": INDEX_FORMAT, "stage": cfg.name, "component": comp.name,
                        "seed": int(seed), "shuffle": cfg.shuffle, "shards": [
                            {"name": p.name, "documents": len(s), "lengths": _lengths_hash(s)}
                            for p, s in zip(self.prefixes, self.shards, strict=True)]}
        self.index = self._packed_index(cfg, f"{where} '{comp.name}'")
        if self.index.num_samples == 0:
            raise DataError(f"blend component {comp.name!r} ({comp.prefix}) has no document "
                            f"that fits stage {cfg.name!r} (seq_length={cfg.seq_length})")
        self.shuffle = cfg.shuffle
        self._perm = lru_cache(maxsize=4)(self._epoch_permutation)
        self._reported_epoch = 0

    def _table(self) -> DocumentTable:
        return DocumentTable.of_shards([np.asarray(s.sequence_lengths) for s in self.shards],
                                       tuple(map(str, self.prefixes)))

    def _packed_index(self, cfg: StageDataConfig, where: str) -> PackedIndex:
        def build(alloc) -> tuple[dict, dict]:
            table = self._table()
            n = len(table.length)
            order = permutation(np.random.default_rng(derive_seed(
                self.seed, cfg.name, self.name, "docs")), n) if cfg.shuffle else np.arange(n)
            ix = pack(table, order, cfg.seq_length, cfg.long_doc_policy, cfg.pack_open_bins,
                      where, alloc=alloc)
            return ({f: getattr(ix, f) for f in PACKED_ARRAYS},
                    {f: getattr(ix, f) for f in PACKED_COUNTS})

        inputs = {**self._inputs, "seq_length": cfg.seq_length, "policy": cfg.long_doc_policy,
                  "open_bins": cfg.pack_open_bins}
        arrays, info = load_or_build(self.cache_dir, self._entry("packed"), inputs, build)
        return PackedIndex(**arrays, **{f: int(info[f]) for f in PACKED_COUNTS})

    def _entry(self, what: str) -> str:
        return f"{self.stage}.{self.name}.seed{self.seed}.{what}"

    @property
    def num_samples(self) -> int:
        return self.index.num_samples

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        def build(alloc) -> tuple[dict, dict]:
            rng = np.random.default_rng(derive_seed(self.seed, self.stage, self.name, "epoch", epoch))
            n = self.num_samples
            return {"perm": permutation(rng, n, alloc("perm", n, np.int64))}, {}

        inputs = {**self._inputs, "epoch": epoch, "num_samples": self.num_samples}
        return load_or_build(self.cache_dir, self._entry(f"epoch{epoch}"), inputs, build)[0]["perm"]

    def packed_sample(self, local: int) -> int:
        """Packed sample read for component-local index `local` (epochs reshuffle)."""
        epoch, j = divmod(local, self.num_samples)
        if epoch > self._reported_epoch and epoch & (epoch - 1) == 0:  # epochs 1, 2, 4, 8 ...
            self._reported_epoch = epoch
            log.warning("stage %s: component %s (%d samples) repeats: epoch %d", self.stage,
                        self.name, self.num_samples, epoch)
        return int(self._perm(epoch)[j]) if self.shuffle else j

    def pieces(self, packed: int) -> list[np.ndarray]:
        ix = self.index
        a, b = ix.sample_ptr[packed], ix.sample_ptr[packed + 1]
        return [self.shards[ix.shard[p]].get(int(ix.doc[p]), offset=int(ix.start[p]),
                                             length=int(ix.length[p])) for p in range(a, b)]


class StageDataset:
    """Blended, packed samples of one stage; `ds[i]` is a pure function of (seed, stage, i)."""

    def __init__(self, cfg: StageDataConfig, seed: int, components: list[_Component]) -> None:
        self.cfg, self.seed, self.components = cfg, int(seed), components
        self.schedule = BlendSchedule([float(c.weight) for c in cfg.blend],
                                      cfg.blend_window_samples, self.seed, cfg.name)
        self.consumed_samples = 0
        self.num_samples = min(self.schedule.global_index_of(i, c.num_samples)
                               for i, c in enumerate(components))

    def __len__(self) -> int:
        return self.num_samples

    def component_of(self, global_index: int) -> tuple[str, int]:
        """(component name, component-local sample index) of a global index."""
        c, local = self.schedule.lookup(int(global_index))
        return self.components[c].name, local

    def __getitem__(self, global_index: int) -> Sample:
        if global_index < 0:
            raise IndexError(f"global sample index {global_index} < 0")
        c, local = self.schedule.lookup(int(global_index))
        comp = self.components[c]
        return self._assemble(comp.pieces(comp.packed_sample(local)), comp.name, int(global_index))

    def _assemble(self, pieces: list[np.ndarray], source: str, index: int) -> Sample:
        cfg, seq = self.cfg, self.cfg.seq_length
        tokens = np.full(seq + 1, cfg.pad_id, dtype=np.int64)
        doc_ids = np.full(seq + 1, len(pieces), dtype=np.int32)
        positions = np.zeros(seq + 1, dtype=np.int64)
        pos = 0
        for k, piece in enumerate(pieces):
            n = len(piece)
            tokens[pos:pos + n], doc_ids[pos:pos + n] = piece, k
            positions[pos:pos + n] = np.arange(n)
            pos += n
        positions[pos:] = np.arange(seq + 1 - pos)
        loss_mask = (np.arange(1, seq + 1) < pos).astype(np.float32)
        if not cfg.reset_position_ids:
            positions = np.arange(seq + 1, dtype=np.int64)
        return Sample(tokens, loss_mask, doc_ids[:seq], positions[:seq], source, index)

    def global_batch_indices(self, step: int, global_batch_samples: int) -> range:
        """Global sample indices of optimizer step `step` (counted within this stage)."""
        return range(step * global_batch_samples, (step + 1) * global_batch_samples)

    @staticmethod
    def rank_slice(indices: range | list[int], dp_rank: int, dp_size: int) -> range | list[int]:
        """The contiguous slice of a global batch that data-parallel rank `dp_rank` reads."""
        if len(indices) % dp_size:
            raise ConfigError("global_batch_samples", len(indices),
                              f"must be divisible by the data-parallel size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ConfigError("dp_rank", dp_rank, f"must be in [0, {dp_size})")
        per = len(indices) // dp_size
        return indices[dp_rank * per:(dp_rank + 1) * per]

    def advance(self, num_samples: int) -> None:
        """Record that `num_samples` more global samples were consumed."""
        self.consumed_samples += int(num_samples)

    def epochs(self, num_global_samples: int | None = None) -> dict[str, float]:
        """Epochs of each component read by the first `num_global_samples` (default: consumed)."""
        n = self.consumed_samples if num_global_samples is None else num_global_samples
        counts = self.schedule.counts_before(n)
        return {c.name: round(int(counts[i]) / c.num_samples, 4)
                for i, c in enumerate(self.components)}

    def fingerprint(self) -> str:
        """What fixes the global sequence besides the seed: blend, shards, packing."""
        cfg = self.cfg
        spec = {"stage": cfg.name, "seq_length": cfg.seq_length, "policy": cfg.long_doc_policy,
                "window": cfg.blend_window_samples, "shuffle": cfg.shuffle,
                "open_bins": cfg.pack_open_bins,
                "blend": [(c.name, float(b.weight), c.num_samples, [p.name for p in c.prefixes])
                          for c, b in zip(self.components, cfg.blend, strict=True)]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def state_dict(self) -> dict:
        """Sampler state: the stage, seed and samples consumed (plus a fingerprint check)."""
        return {"stage": self.cfg.name, "seed": self.seed,
                "consumed_samples": self.consumed_samples, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Resume: consumed samples from `state`; DataError if it belongs to other data."""
        for key, mine in (("stage", self.cfg.name), ("seed", self.seed),
                          ("fingerprint", self.fingerprint())):
            if strict and state.get(key) != mine:
                raise DataError(f"sampler state is for {key}={state.get(key)!r}, this stage's "
                                f"data has {key}={mine!r} (blend, shards or packing changed?)")
        self.consumed_samples = int(state["consumed_samples"])

    def report(self) -> dict:
        """Sizes, routed / split long documents and padding per component."""
        return {c.name: {"packed_samples": c.num_samples, "shards": len(c.prefixes),
                         "routed_documents": c.index.routed_documents,
                         "split_documents": c.index.split_documents,
                         "padding_fraction": round(c.index.padding_tokens / (
                             c.num_samples * (self.cfg.seq_length + 1)), 4)}
                for c in self.components}


def build_stage_dataset(stage_cfg: StageDataConfig, seed: int = 1234) -> StageDataset:
    """Open a stage's shards, pack its components and set up its blend."""
    validate_stage(stage_cfg, f"stages.{stage_cfg.name}")
    comps = [_Component(c, stage_cfg, seed, f"stages.{stage_cfg.name}.blend[{i}]")
             for i, c in enumerate(stage_cfg.blend)]
    ds = StageDataset(stage_cfg, seed, comps)
    for name, r in ds.report().items():
        if r["routed_documents"]:
            log.info("stage %s: component %s: %d documents longer than seq_length+1=%d routed "
                     "to a longer stage", stage_cfg.name, name, r["routed_documents"],
                     stage_cfg.seq_length + 1)
    return ds
