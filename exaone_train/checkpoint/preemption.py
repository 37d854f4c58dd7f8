"""SIGTERM / SIGUSR1: the handler only sets a flag. At the next step boundary the ranks agree
(an all-reduce of the flag, see `CheckpointCallback`), save, and the run exits with
`REQUEUE_EXIT_CODE` (3) so `slurm/train.sh` requeues the job."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("exaone_train")

REQUEUE_EXIT_CODE = 3
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []
_stopped_for_requeue = False
_previous: dict[int, object] = {}


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)  # nothing else here: no I/O, no collectives


def install() -> None:
    """Install the handlers (main thread only; a no-op elsewhere) and clear earlier state."""
    global _stopped_for_requeue
    _received.clear()
    _stopped_for_requeue = False
    if threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        previous = signal.signal(s, _handler)
        if previous is not _handler:
            _previous[s] = previous


def uninstall() -> None:
    """Put back the handlers `install()` replaced (the loop has ended)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s, previous in _previous.items():
        signal.signal(s, previous)  # type: ignore[arg-type]
    _previous.clear()


def blocked_while(start: Callable[[], T]) -> T:
    """Run `start` (which starts helper processes) with SIGNALS blocked in this thread. Slurm
    delivers a step signal (the relayed time-limit USR1, scancel's TERM) to every process of
    the step; a helper started by fork+exec has the default action (terminate) but inherits
    the blocked mask, so it survives. A signal meant for this process stays pending meanwhile
    and is handled as soon as the mask is restored: nothing is lost."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        return start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def received() -> int | None:
    """The first signal received since `install()`, if any."""
    return _received[0] if _received else None


def mark_stopped_for_requeue() -> None:
    global _stopped_for_requeue
    _stopped_for_requeue = True


def exit_code() -> int:
    """3 when the last run stopped on a signal after saving its checkpoint, else 0."""
    return REQUEUE_EXIT_CODE if _stopped_for_requeue else 0
