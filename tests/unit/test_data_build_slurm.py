"""slurm/data_build.sh without a cluster: it parses (`bash -n`), an array task runs `data build
ARGS --worker i/N` with i/N from the array environment, a plain job runs `data merge ARGS`, and
an unevenly spaced array is refused. (tests/slurm runs the scripts on a real Slurm.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "slurm" / "data_build.sh"


def _run(array: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="42", EXAONE_TRAIN_ROOT=str(ROOT), EXAONE_VENV=sys.prefix,
               EXAONE_DATA_CMD="echo CMD", **array)
    return subprocess.run(["bash", str(SCRIPT), "shipped_corpus", "build.num_workers=2"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("array,spec", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "2",
      "SLURM_ARRAY_TASK_COUNT": "3"}, "0/3"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "7",
      "SLURM_ARRAY_TASK_COUNT": "3"}, "2/3"),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6",
      "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, "2/4"),
])
def test_array_task_builds_its_worker_share(array, spec):
    r = _run(array)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == \
        f"CMD data build shipped_corpus build.num_workers=2 --worker {spec}"


def test_plain_job_merges():
    r = _run({})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "CMD data merge shipped_corpus build.num_workers=2"


def test_uneven_array_is_refused():
    r = _run({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0",
              "SLURM_ARRAY_TASK_MAX": "9", "SLURM_ARRAY_TASK_COUNT": "3"})  # --array=0,5,9
    assert r.returncode != 0 and "not 3 evenly spaced tasks" in r.stderr
    assert "CMD" not in r.stdout
