"""Progress of checkpoint I/O on rank 0 (tqdm on stderr): at 236B a save, a load or a
verification is minutes of work. megatron-core's dist_checkpointing save and load are single
calls with no callback, so a thread samples what can be measured from outside while they run:
the bytes in the directory being written, the bytes this process has read (/proc/self/io).
Hashing (verify, manifest) counts its own bytes.

The bars write to their own stream on a duplicate of fd 2, not to `sys.stderr`: the save forks
writer processes while the sampling thread runs, and a forked child flushes `sys.stderr` on
exit, which would wait forever on a lock the sampling thread held at the fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POLL_S = 1.0
_STREAM: list[Any] = []  # the bars' stream, opened once


def _stream() -> Any:
    if not _STREAM:
        _STREAM.append(os.fdopen(os.dup(2), "w", buffering=1))
    return _STREAM[0]


def bar(desc: str, total: float | None, enabled: bool) -> Any:
    """A byte-counting tqdm bar (None when not `enabled`: other ranks, progress off)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=True, mininterval=POLL_S, file=_stream())


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (files may vanish while it walks)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def bytes_read() -> int | None:
    """Bytes this process has read so far (Linux `/proc/self/io` rchar), None elsewhere."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return None


@contextmanager
def sampled(desc: str, measure: Callable[[], int | None], total: float | None,
            enabled: bool) -> Iterator[None]:
    """Show `measure()` (bytes so far) as a bar while the body runs, sampled every POLL_S."""
    b = bar(desc, total, enabled and measure() is not None)
    if b is None:
        yield
        return
    start, stop = measure() or 0, threading.Event()

    def update() -> None:
        b.n = max(0, (measure() or 0) - start)
        b.refresh()

    def poll() -> None:
        while not stop.wait(POLL_S):
            update()

    thread = threading.Thread(target=poll, name="checkpoint-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        update()
        b.close()
