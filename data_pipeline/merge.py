"""`exaone-train data merge`: check the partial manifests of a `--worker i/N` build and join
them into `manifest.json`.

Every check comes before anything is written, and merging writes only `manifest.json` (shards
already carry their final names: see data_pipeline/split.py), so a failed merge changes nothing:
fix what it names (run the missing worker, delete a stale partial) and merge again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from data_pipeline.build import (
    FORMAT,
    MANIFEST,
    build_identity,
    decontamination_summary,
    read_json,
    source_totals,
    write_json,
)
from data_pipeline.config import BuildConfig, resolve_path, validate_build
from data_pipeline.shards import INDEX_BYTES
from data_pipeline.split import plan_fingerprint
from exaone_train.errors import DataError

PARTIAL_GLOB = "manifest.worker-*.json"


def _partials(out: Path) -> list[tuple[Path, dict]]:
    found = [(p, read_json(p) or {}) for p in sorted(out.glob(PARTIAL_GLOB))]
    if not found:
        raise DataError(f"{out}: no partial manifests ({PARTIAL_GLOB}); run `exaone-train data "
                        "build RECIPE --worker i/N` for i = 0..N-1 first")
    for p, m in found:
        w = m.get("worker")
        if not isinstance(w, dict) or "index" not in w or "count" not in w:
            raise DataError(f"{p}: not a partial manifest (no worker index/count)")
    return found


def _check_workers(found: list[tuple[Path, dict]]) -> int:
    """N, after checking that workers 0..N-1 each wrote exactly one partial."""
    counts = {m["worker"]["count"] for _, m in found}
    if len(counts) > 1:
        listing = ", ".join(f"{p.name} ({m['worker']['index']}/{m['worker']['count']})"
                            for p, m in found)
        raise DataError(f"partial manifests of builds with different worker counts: {listing}; "
                        "delete the stale ones")
    (n,) = counts
    seen: dict[int, Path] = {}
    for p, m in found:
        i = m["worker"]["index"]
        if i in seen:
            raise DataError(f"worker {i}/{n} is duplicated: {seen[i]} and {p} both claim it")
        seen[i] = p
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        names = ", ".join(f"{i}/{n}" for i in missing)
        raise DataError(f"{len(missing)} of {n} workers missing: {names} (expected their partial "
                        f"manifests in {found[0][0].parent}); run `data build --worker` for them")
    return n


def _check_identity(found: list[tuple[Path, dict]], expected: dict[str, str]) -> None:
    """Each partial was built from this recipe's settings, inputs and tokenizer."""
    what = {"settings_sha256": "recipe build settings", "plan_sha256": "input files (names, "
            "sizes, mtimes)", "tokenizer_sha256": "tokenizer"}
    for p, m in found:
        got = {"settings_sha256": m.get("settings_sha256"), "plan_sha256": m.get("plan_sha256"),
               "tokenizer_sha256": (m.get("tokenizer") or {}).get("sha256")}
        for field, value in got.items():
            if value != expected[field]:
                raise DataError(f"{p}: built from other {what[field]} than the recipe: {field} "
                                f"{value}, expected {expected[field]}; rebuild that worker")


def _check_shards(out: Path, found: list[tuple[Path, dict]]) -> None:
    """Every shard a partial lists is there with the sizes its counts need (`stat` only: at
    corpus scale reading every index again would cost as much as the build's own check)."""
    itemsize = np.dtype(found[0][1]["dtype"]).itemsize
    for p, m in found:
        for name, entry in m["sources"].items():
            for s in entry["shards"]:
                prefix = out / s["prefix"]
                need = {Path(f"{prefix}.bin"): s["tokens"] * itemsize,
                        Path(f"{prefix}.idx"): INDEX_BYTES + s["documents"] * 20 + 8}
                for f, size in need.items():
                    got = f.stat().st_size if f.is_file() else None
                    if got != size:
                        raise DataError(f"{f}: {'missing' if got is None else f'{got} bytes'}, "
                                        f"{p.name} recorded {s['documents']} documents / "
                                        f"{s['tokens']} tokens of source {name} ({size} bytes); "
                                        "truncated or overwritten: rebuild that worker")


def _sum_counts(entries: list[dict], field: str) -> dict:
    total: dict = {}
    for e in entries:
        for k, v in e.get(field, {}).items():
            if isinstance(v, dict):
                t = total.setdefault(k, {})
                for kk, vv in v.items():
                    t[kk] = t.get(kk, 0) + vv
            else:
                total[k] = total.get(k, 0) + v
    return dict(sorted(total.items())) if field == "languages" else total


def _merge_source(entries: list[dict], max_examples: int) -> dict:
    """One source's entry from its workers' entries, in worker order."""
    merged = {"key": {"workers": len(entries), "worker_keys_sha256": hashlib.sha256(json.dumps(
                  [e["key"] for e in entries], sort_keys=True).encode()).hexdigest()},
              "shards": [s for e in entries for s in e["shards"]],
              "documents": sum(e["documents"] for e in entries),
              "tokens": sum(e["tokens"] for e in entries),
              "languages": _sum_counts(entries, "languages"),
              "bad_records": sum(e["bad_records"] for e in entries),
              "bad_record_examples": [x for e in entries for x in e["bad_record_examples"]
                                      ][:max_examples],
              "skipped": all(e["skipped"] for e in entries)}
    if any("decontamination" in e for e in entries):
        merged["decontamination"] = _sum_counts(entries, "decontamination")
    return merged


def merge(cfg: BuildConfig) -> dict:
    """Check the partial manifests in `cfg.output_dir` and write `manifest.json` from them."""
    validate_build(cfg)
    out = resolve_path(cfg.output_dir)
    found = _partials(out)
    n = _check_workers(found)
    found.sort(key=lambda pm: pm[1]["worker"]["index"])
    tokenizer, index, settings_sha = build_identity(cfg)
    _check_identity(found, {"settings_sha256": settings_sha, "tokenizer_sha256":
                            tokenizer["sha256"], "plan_sha256": plan_fingerprint(cfg.sources, n)})
    _check_shards(out, found)
    sources = {src.name: _merge_source([m["sources"][src.name] for _, m in found],
                                       cfg.max_bad_record_examples) for src in cfg.sources}
    manifest = {"format": FORMAT, "dtype": found[0][1]["dtype"], "tokenizer": tokenizer,
                "sources": sources, "totals": source_totals(sources),
                "decontamination": decontamination_summary(index, sources),
                "workers": {"count": n, "partials": [p.name for p, _ in found]},
                "build_seconds": max(m["build_seconds"] for _, m in found)}
    write_json(out / MANIFEST, manifest)
    return manifest
