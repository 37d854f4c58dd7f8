"""Helpers for the tests that run real training: `python -m launcher train` (or under
torchrun) as a real subprocess, wait for a checkpoint, read per-step losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from exaone_train.parallel.ranks import env_without_rendezvous

REPO = Path(__file__).resolve().parents[2]
# tiny K-EXAONE, 64-token sequences, 4 samples a step: ~0.15 s a step on 2 CPU cores
TINY = ["train.data_source=synthetic", "logging.wandb=false", "train.seq_length_tokens=64",
        "train.global_batch_samples=4", "train.micro_batch_samples=2"]


def train_command(run_dir: str | Path, overrides: list[str], nproc: int = 1) -> list[str]:
    args = ["-m", "launcher", "train", f"run.dir={run_dir}", *TINY, *overrides]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *args]


def _env(extra: dict | None) -> dict:
    env = env_without_rendezvous(OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1",
                                 WANDB_MODE="offline", PYTHONPATH=str(REPO))
    env.update(extra or {})
    return env


def start_train(run_dir, overrides: list[str], nproc: int = 1, env: dict | None = None,
                log_path: str | Path | None = None) -> subprocess.Popen:
    """Start a training run in its own process group (so a kill reaches every rank)."""
    log = open(log_path or Path(run_dir).with_suffix(".log"), "ab")
    return subprocess.Popen(train_command(run_dir, overrides, nproc), cwd=REPO, env=_env(env),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_train(run_dir, overrides: list[str], nproc: int = 1, env: dict | None = None,
              timeout_s: float = 300) -> int:
    p = start_train(run_dir, overrides, nproc, env)
    try:
        return p.wait(timeout=timeout_s)
    finally:
        if p.poll() is None:
            kill_group(p)


def wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 240, poll_s: float = 0.01,
             what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc; torchrun starts workers in new sessions, so a
    process-group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the run and every process it started (all ranks), then reap it."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    proc.wait()


def losses(run_dir: str | Path) -> dict[int, tuple[float, float]]:
    """{step: (loss, lr)} from metrics.jsonl; a step logged twice (a killed run's steps past its
    last checkpoint, then the resumed run's) keeps the later record."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = (r["loss"], r["lr"])
    return out


def steps_logged(run_dir: str | Path) -> int:
    path = Path(run_dir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0
