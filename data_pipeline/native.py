"""The compiled packing helpers (`_pack.c`), built with the system C compiler at first use.

Like megatron-core's own dataset helpers, the source ships with the package and is compiled
on the machine that runs it: into `$EXAONE_TRAIN_NATIVE_DIR`, else `$XDG_CACHE_HOME` (or
`~/.cache`)`/exaone-train/native`, under a name keyed by the source's hash, written
atomically so concurrent ranks never load a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from exaone_train.errors import DataError

SOURCE = Path(__file__).with_name("_pack.c")
_i64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_i32 = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")


def native_dir() -> Path:
    env = os.environ.get("EXAONE_TRAIN_NATIVE_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "exaone-train" / "native"


def _compile(out: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise DataError(f"no C compiler (cc/gcc, or $CC) to build {SOURCE.name}, the packing "
                        "helper; install one (e.g. apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    cmd = [cc, "-O3", "-shared", "-fPIC", "-std=c99", "-o", str(tmp), str(SOURCE)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise DataError(f"compiling {SOURCE} failed ({' '.join(cmd)}):\n{res.stderr}")
    os.replace(tmp, out)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded helper, compiled first if this source version has no library yet."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    path = native_dir() / f"exaone_pack-{digest}.so"
    if not path.is_file():
        _compile(path)
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.exaone_pack.restype = i64
    lib.exaone_pack.argtypes = [_i32, _i64, i64, _i64, i64, i64, ctypes.c_int, i64, i64,
                                _i32, _i64, _i64, _i32, _i64]
    lib.exaone_shuffle.restype = None
    lib.exaone_shuffle.argtypes = [_i64, i64, ptr, ptr, ptr]
    return lib


def permutation(rng: np.random.Generator, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """`rng.permutation(n)`, the same int64 array and the same generator state afterwards
    (numpy's own shuffle algorithm, drawing from `rng`'s bit generator), but with the swaps'
    memory prefetched: several times faster once the array outgrows the CPU caches. Written
    into `out` (int64 [n]) when given."""
    if out is None:
        out = np.empty(n, dtype=np.int64)
    if out.shape != (n,) or out.dtype != np.int64 or not out.flags.c_contiguous:
        raise ValueError(f"permutation: out must be a contiguous int64 array of {n}")
    bitgen = rng.bit_generator
    c = bitgen.ctypes
    with bitgen.lock:
        library().exaone_shuffle(out, n, c.state_address, ctypes.cast(c.next_uint32, ctypes.c_void_p),
                                 ctypes.cast(c.next_uint64, ctypes.c_void_p))
    return out
