"""`manifest.json`: every file of a checkpoint with its size and sha256, written last (after all
ranks finished writing). A checkpoint is valid iff its manifest exists, parses, and every file
it lists is present with that size (and checksum, when asked).

Hashing is shared out: rank r hashes files r, r+W, r+2W, ... (sorted by path) and rank 0 merges,
so a multi-node checkpoint on a shared file system is hashed by every node at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from exaone_train.checkpoint.progress import bar as progress_bar
from exaone_train.parallel import ranks

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_files(ckpt_dir: Path) -> list[str]:
    """Relative paths of every regular file under `ckpt_dir` except the manifest, sorted."""
    out = []
    for root, _, files in os.walk(ckpt_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), ckpt_dir)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)



def _gather(local: dict) -> dict:
    """Union of every rank's dict (collective when distributed)."""
    world = ranks.world_size()
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    merged: dict = {}
    for p in parts:
        merged.update(p)
    return merged


def hash_files(ckpt_dir: Path, files: list[str], progress: bool = False) -> dict[str, dict]:
    """{relpath: {"bytes", "sha256"}} for every file; each rank hashes its share (collective)."""
    rank, world = ranks.rank(), ranks.world_size()
    mine = files[rank::world]
    bar = progress_bar("checkpoint sha256", sum((ckpt_dir / f).stat().st_size for f in mine),
                       progress and rank == 0)
    local = {}
    for rel in mine:
        p = ckpt_dir / rel
        local[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        if bar is not None:
            bar.update(local[rel]["bytes"])
    if bar is not None:
        bar.close()
    return _gather(local)


def write_manifest(ckpt_dir: Path, info: dict, progress: bool = True) -> dict:
    """Hash every file (collective) and write manifest.json from rank 0, fsynced."""
    files = list_files(ckpt_dir)
    entries = hash_files(ckpt_dir, files, progress)
    manifest = {"format_version": FORMAT_VERSION, **info, "files": entries,
                "total_bytes": sum(e["bytes"] for e in entries.values())}
    if ranks.is_rank0():
        write_json_durable(ckpt_dir / MANIFEST, manifest)
    return manifest


def write_json_durable(path: Path, obj: Any) -> None:
    """Write `path` via a temporary file, fsync, os.replace: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(ckpt_dir: Path) -> dict | None:
    try:
        m = json.loads((ckpt_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def verify(ckpt_dir: Path, checksums: bool = True, collective: bool = True,
           progress: bool = False) -> list[str]:
    """Problems found in `ckpt_dir` (empty list = valid). With `collective`, every rank must
    call it; the hashing is shared out and every rank gets the same answer. `progress`: a
    bar of the bytes rank 0 hashes."""
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    problems: list[str] = []
    if manifest is None:
        problems.append(f"{ckpt_dir / MANIFEST}: missing or unreadable (incomplete save)")
        entries: dict = {}
    else:
        entries = manifest["files"]
    names = sorted(entries)
    for rel in names:
        p = ckpt_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != entries[rel]["bytes"]:
            problems.append(f"{rel}: {p.stat().st_size} bytes, manifest says "
                            f"{entries[rel]['bytes']}")
    if checksums and not problems:
        rank, world = (ranks.rank(), ranks.world_size()) if collective else (0, 1)
        mine = names[rank::world]
        bar = progress_bar(f"checkpoint verify {ckpt_dir.name}",
                           sum(entries[rel]["bytes"] for rel in mine), progress and rank == 0)
        for rel in mine:
            if sha256_file(ckpt_dir / rel) != entries[rel]["sha256"]:
                problems.append(f"{rel}: sha256 differs from the manifest")
            if bar is not None:
                bar.update(entries[rel]["bytes"])
        if bar is not None:
            bar.close()
    if collective and ranks.world_size() > 1:
        parts: list[Any] = [None] * ranks.world_size()
        dist.all_gather_object(parts, problems)
        problems = sorted({x for p in parts for x in p})
    return problems
