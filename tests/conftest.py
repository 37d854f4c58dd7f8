import logging
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



@pytest.fixture(autouse=True)
def _restore_root_logging():
    """`launcher.cli.main` installs the console's handlers on the root logger (and may set
    EXAONE_TRAIN_VERBOSE): undo that after each test so no test sees another's logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    verbose = os.environ.get("EXAONE_TRAIN_VERBOSE")
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
        h.close()
    root.setLevel(level)
    logging.captureWarnings(False)
    if verbose is None:
        os.environ.pop("EXAONE_TRAIN_VERBOSE", None)
    else:
        os.environ["EXAONE_TRAIN_VERBOSE"] = verbose
