"""slurm/data_build.sh without a cluster: it parses (`bash -n`), an array task runs `data build
ARGS --worker i/N` with i/N from the array environment, a plain job runs `data merge ARGS`, and
an unevenly spaced array is refused. Every slurm/*.sh finds slurm/lib.sh with the same
`source_lib`. (tests/slurm runs the scripts on a real Slurm.)"""

from __future__ import annotations

import os
import re
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
    subprocess.run(["bash", "-n", str(ROOT / "slurm" / "lib.sh")], check=True)


def test_every_batch_script_sources_lib_sh_with_the_same_function():
    """sbatch spools a copy of the script, so each one carries the function that finds lib.sh
    (slurm/lib.sh): the copies must not drift, and no script keeps its own log/die."""
    found = {}
    for script in sorted((ROOT / "slurm").glob("*.sh")):
        if script.name == "lib.sh":
            continue
        text = script.read_text()
        (func,) = re.findall(r"^source_lib\(\) \{.*?^\}$", text, re.S | re.M)
        found[script.name] = func
        assert re.search(r"^\s*source_lib\b(?!\()", text, re.M), f"{script.name} never calls it"
        assert not re.search(r"^(log|die|repo_root)\(\)", text, re.M), script.name
    assert {"train.sh", "pretrain_kexaone.sh", "data_build.sh"} <= found.keys()
    assert len(set(found.values())) == 1, found


def test_outside_sbatch_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", str(SCRIPT), "x"], env={**env, "EXAONE_TRAIN_ROOT": str(ROOT)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "run me with sbatch (SLURM_JOB_ID is not set)" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "x"], env={**env, "EXAONE_TRAIN_ROOT": "/nonexistent"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no exaone-train checkout at /nonexistent" in r.stderr


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
