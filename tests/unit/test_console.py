"""The console (exaone_train/console.py): our lines on the console, megatron-core's INFO and
library warnings only in the run's log file (with the records from before it existed), the
Transformer Engine absence said once, `logging.verbose=true` bringing everything back."""

from __future__ import annotations

import logging
import warnings

import pytest

from exaone_train import console


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.delenv("EXAONE_TRAIN_TE_NOTICE_SAID", raising=False)
    monkeypatch.delenv("EXAONE_TRAIN_VERBOSE", raising=False)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _emit_all() -> None:
    logging.getLogger("megatron.core.distributed").info("Params for bucket 1: decoder.layers.0")
    logging.getLogger("exaone_train").info("step 1 | loss 8.3")
    logging.getLogger("megatron.core.optimizer").warning("a megatron warning")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(3):  # e.g. three megatron modules, each warning at import
            warnings.warn("Transformer Engine and Apex are not installed. Falling back",
                          UserWarning, stacklevel=1)
        warnings.warn("full scope is deprecated", UserWarning, stacklevel=1)


def test_quiet_console_and_complete_run_log(tmp_path, capsys):
    console.setup(verbose=False)
    logging.getLogger("megatron.core").info("before the run directory exists")
    path = console.attach_run_log(tmp_path, "rank0")
    _emit_all()
    err = capsys.readouterr().err
    assert "step 1 | loss 8.3" in err and "a megatron warning" in err
    assert "Params for bucket" not in err and "before the run" not in err
    assert "deprecated" not in err and "Falling back" not in err
    assert err.count(console.TE_NOTICE) == 1 and len(err.strip().splitlines()) == 3
    text = path.read_text()
    for words in ("before the run directory exists", "Params for bucket 1", "step 1 | loss",
                  "full scope is deprecated", "a megatron warning"):
        assert words in text
    assert text.count("UserWarning: Transformer Engine and Apex are not installed") == 3
    # a child process (the mark is inherited) does not say it again
    console.setup(verbose=False)
    _emit_all()
    assert console.TE_NOTICE not in capsys.readouterr().err


def test_verbose_brings_everything_back(tmp_path, capsys):
    assert console.verbose_requested(["run.dir=x", "logging.verbose=true"])
    assert not console.verbose_requested(["logging.verbose=false"])
    console.setup(verbose=console.verbose_requested(["++logging.verbose=True"]))
    _emit_all()
    err = capsys.readouterr().err
    assert "Params for bucket" in err and "deprecated" in err
    assert err.count("UserWarning: Transformer Engine and Apex are not installed") == 3


def test_without_setup_nothing_changes(tmp_path):
    assert console.attach_run_log(tmp_path) is None
    assert not (tmp_path / "logs").exists()
