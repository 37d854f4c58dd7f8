"""On-disk cache of index arrays (memory-mapped `.npy`), keyed by a hash of their inputs.

An entry is a directory `<cache dir>/<name>/`: one `<array>.npy` per array and `meta.json`
(`key`: sha256 of the inputs, the inputs themselves, each array's shape and dtype, and the
builder's small `info` values). One process at a time builds an entry (an `flock` on
`<name>.lock`, so concurrent ranks build it once and the others wait, then read it); it is
written under a temporary name and renamed into place, so a reader sees a whole entry or
none. Every reader maps the arrays read-only and pages in only what it touches. An entry
whose key differs (shards or settings changed) is stale, one that does not load or whose
files do not match its meta is corrupt: both are rebuilt with a warning.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exaone_train.errors import DataError

log = logging.getLogger(__name__)
META = "meta.json"
Arrays = dict[str, np.ndarray]
Alloc = Callable[[str, int, type], np.ndarray]  # (array name, length, dtype) -> a 1-d array to fill
Builder = Callable[[Alloc], tuple[Arrays, dict]]


def in_memory(name: str, n: int, dtype: type) -> np.ndarray:
    """The `Alloc` without a cache: a plain array."""
    return np.empty(n, dtype)


def inputs_key(inputs: dict) -> str:
    """sha256 of the JSON form of `inputs` (the cache key)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _load(entry: Path, key: str) -> tuple[Arrays, dict] | str:
    """The entry's arrays (memory-mapped) and info, or why it cannot be used."""
    try:
        meta = json.loads((entry / META).read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as e:
        return f"corrupt ({META}: {e})"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return "stale (its shards or settings changed)"
    arrays = {}
    for name, (shape, dtype) in meta.get("arrays", {}).items():
        path = entry / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            return f"corrupt ({path.name}: {e})"
        size = arr.offset + arr.nbytes if isinstance(arr, np.memmap) else -1
        if list(arr.shape) != shape or arr.dtype.str != dtype or size != path.stat().st_size:
            return (f"corrupt ({path.name}: shape {list(arr.shape)} {arr.dtype.str}, "
                    f"{path.stat().st_size} bytes; {META} says {shape} {dtype})")
        arrays[name] = arr
    return arrays, meta.get("info", {})


def _tmp_entry(entry: Path) -> tuple[Path, Alloc, Arrays]:
    """A fresh temporary entry next to `entry`, an `Alloc` whose arrays are `.npy` files in it,
    mapped (the builder fills them in place: no copy at the end, no anonymous memory), and
    the arrays it handed out."""
    tmp = entry.with_name(f".{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    given: Arrays = {}

    def alloc(name: str, n: int, dtype: type) -> np.ndarray:
        given[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.dtype(dtype), (n,))
        return given[name]
    return tmp, alloc, given


def _write(entry: Path, tmp: Path, given: Arrays, key: str, inputs: dict, arrays: Arrays,
           info: dict) -> None:
    for name, arr in arrays.items():
        if arr is given.get(name):
            continue  # filled in place: its pages are the file's (no fsync, like np.save)
        given.pop(name, None)  # handed out but not used: its file is replaced
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
    meta = {"key": key, "inputs": inputs, "info": info,
            "arrays": {n: [list(a.shape), a.dtype.str] for n, a in arrays.items()}}
    (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if entry.exists():  # a stale or corrupt entry: out of the way first (rename is atomic)
        old = entry.with_name(f".{entry.name}.old{os.getpid()}")
        os.replace(entry, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, entry)


def load_or_build(cache_dir: Path | None, name: str, inputs: dict,
                  build: Builder) -> tuple[Arrays, dict]:
    """`build(alloc)`'s (arrays, info), read from `cache_dir/name` when its inputs match, else
    built (by one process at a time), saved and read back memory-mapped; arrays the builder
    takes from `alloc` are written in place. Without a cache directory, or when it cannot be
    written, the arrays are built in memory."""
    if cache_dir is None:
        return build(in_memory)
    entry, key = cache_dir / name, inputs_key(inputs)
    found = _load(entry, key)
    if isinstance(found, tuple):
        return found
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / f"{name}.lock", "a")  # noqa: SIM115 (held across the build)
    except OSError as e:
        log.warning("index cache %s is not writable (%s): building in memory", cache_dir, e)
        return build(in_memory)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _load(entry, key)  # another process may have built it while we waited
        if isinstance(found, tuple):
            return found
        if found != "missing":
            log.warning("index cache %s is %s: rebuilding it", entry, found)
        tmp, alloc, given = _tmp_entry(entry)
        arrays, info = build(alloc)
        _write(entry, tmp, given, key, inputs, arrays, info)
        del arrays, given
        found = _load(entry, key)
    if isinstance(found, str):
        raise DataError(f"index cache {entry} just written does not read back: {found}")
    return found
