"""What a person sees on the console, and what goes to the run directory's log file.

By default the console shows our own lines (loggers `exaone_train`, `data_pipeline`,
`launcher`: rank/step lines, stage banners, gate results), warnings and errors of any logger,
and progress bars. Everything else -- megatron-core's INFO (DDP config dumps, bucket parameter
lists, dataset reader lines) and Python `UserWarning`s of libraries (Transformer Engine / Apex
fallbacks, deprecations) -- goes only to `<run.dir>/logs/rank<R>.log` (the demo's own process: `logs/demo.log`), which receives every
record at INFO and above, including those from before the run directory existed. The absence of
Transformer Engine is said once, in one line, per console (child processes inherit the
"already said" mark). `logging.verbose=true` puts everything back on the console.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from logging.handlers import BufferingHandler
from pathlib import Path

OUR_LOGGERS = ("exaone_train", "data_pipeline", "launcher", "__main__")
TE_WARNING = re.compile(r"(Transformer Engine|Apex)( and Apex)? (is|are) not installed")
TE_NOTICE = ("Transformer Engine is not installed (a CPU machine): megatron-core uses its local "
             "torch layers and optimizers (its fallback warnings: the run's logs/)")
_SAID_ENV = "EXAONE_TRAIN_TE_NOTICE_SAID"
_VERBOSE_ENV = "EXAONE_TRAIN_VERBOSE"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(message)s"


def is_ours(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] in OUR_LOGGERS


class ConsoleHandler(logging.StreamHandler):
    """stderr; quiet mode passes our records, other loggers' warnings and errors (not Python
    warnings of libraries), and turns the first Transformer Engine / Apex warning into
    TE_NOTICE."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(sys.stderr)
        self.verbose = verbose
        self.setFormatter(logging.Formatter(CONSOLE_FORMAT, "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.verbose or is_ours(record):
            return super().emit(record)
        if record.name == "py.warnings":
            if TE_WARNING.search(record.getMessage()) and not os.environ.get(_SAID_ENV):
                os.environ[_SAID_ENV] = "1"
                super().emit(logging.makeLogRecord(
                    {"name": "exaone_train", "levelno": logging.INFO, "levelname": "INFO",
                     "msg": TE_NOTICE, "created": record.created, "msecs": record.msecs}))
            return None
        if record.levelno >= logging.WARNING:
            super().emit(record)
        return None


class _EarlyRecords(BufferingHandler):
    """Keeps the records of before the run directory existed (the newest `capacity`)."""

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        if len(self.buffer) > self.capacity:
            del self.buffer[0]
        return False


def verbose_requested(overrides: list[str]) -> bool:
    """`logging.verbose=true` among Hydra overrides, or EXAONE_TRAIN_VERBOSE=1."""
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == "logging.verbose":
            return value.strip().lower() in ("true", "1", "yes")
    return os.environ.get(_VERBOSE_ENV, "") == "1"


def setup(verbose: bool = False) -> None:
    """Root logging at INFO: the console handler plus a buffer for the run's log file.
    Idempotent (a second call replaces the handlers)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, ConsoleHandler | _EarlyRecords | _RunLog):
            root.removeHandler(h)
    root.setLevel(logging.INFO)
    root.addHandler(_EarlyRecords(capacity=20_000))
    root.addHandler(ConsoleHandler(verbose))
    logging.captureWarnings(True)
    if verbose:
        os.environ[_VERBOSE_ENV] = "1"  # child processes (demo -> curriculum) inherit it


class _RunLog(logging.FileHandler):
    pass


def attach_run_log(run_dir: str | Path, name: str = "rank0") -> Path | None:
    """Send every record (the early ones first) to <run_dir>/logs/<name>.log; None when
    `setup` was not called (e.g. under pytest: nothing is changed)."""
    root = logging.getLogger()
    early = next((h for h in root.handlers if isinstance(h, _EarlyRecords)), None)
    if early is None and not any(isinstance(h, ConsoleHandler) for h in root.handlers):
        return None
    for h in [h for h in root.handlers if isinstance(h, _RunLog)]:
        root.removeHandler(h)
        h.close()
    path = Path(run_dir) / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLog(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    if early is not None:
        for record in early.buffer:
            handler.emit(record)
        root.removeHandler(early)
    root.addHandler(handler)
    return path
