"""SIGTERM / SIGUSR1: the handler only sets a flag. At the next step boundary the ranks agree
(an all-reduce of the flag, see `CheckpointCallback`), save, and the run exits with
`REQUEUE_EXIT_CODE` (3) so `slurm/train.sh` requeues the job."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

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


def received() -> int | None:
    """The first signal received since `install()`, if any."""
    return _received[0] if _received else None


def mark_stopped_for_requeue() -> None:
    global _stopped_for_requeue
    _stopped_for_requeue = True


def exit_code() -> int:
    """3 when the last run stopped on a signal after saving its checkpoint, else 0."""
    return REQUEUE_EXIT_CODE if _stopped_for_requeue else 0
