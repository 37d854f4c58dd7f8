"""Resume after a crash is bit-exact: real `python -m launcher train` processes (1 process and
torchrun with 2), SIGKILLed after the step-10 checkpoint exists, relaunched on the same run
directory, give the per-step losses and LRs of a straight 20-step run exactly (fp32,
float equality of metrics.jsonl values). Also: a kill in the middle of a save leaves the
previous checkpoint to resume from; SIGUSR1 saves, exits 3, and the run continues exactly."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.helpers.train_runs import (
    _descendants,
    kill_group,
    losses,
    run_train,
    start_train,
    steps_logged,
    wait_for,
)

STEPS = 20
RUN = [f"train.train_steps={STEPS}", "checkpoint.interval_steps=10"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """20 steps without interruption, one process."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert run_train(run_dir, RUN) == 0
    return losses(run_dir)


def _resumed_step(run_dir) -> list[int]:
    """Steps the runs of this directory resumed from (from their logs)."""
    text = run_dir.with_suffix(".log").read_text()
    return [int(line.split(" at step ")[1].split()[0]) for line in text.splitlines()
            if "resumed from" in line]


def _kill_after_checkpoint_and_resume(run_dir, nproc: int) -> None:
    proc = start_train(run_dir, RUN, nproc)
    ckpt10 = run_dir / "checkpoints" / "iter_0000010"
    wait_for(ckpt10.is_dir, proc, what="the step-10 checkpoint")
    kill_group(proc)
    # the kill must land between the two checkpoints, or the test proves nothing
    assert not (run_dir / "checkpoints" / "iter_0000020").exists()
    assert run_train(run_dir, RUN, nproc) == 0
    assert _resumed_step(run_dir) == [10]


def test_sigkill_resume_is_bit_exact_one_process(tmp_path, straight):
    run_dir = tmp_path / "run"
    _kill_after_checkpoint_and_resume(run_dir, 1)
    assert losses(run_dir) == straight  # every step 1..20: loss and LR, exact


@pytest.fixture(scope="module")
def straight2(tmp_path_factory):
    """20 steps without interruption, torchrun with 2 processes (DP2)."""
    run_dir = tmp_path_factory.mktemp("straight2") / "run"
    assert run_train(run_dir, RUN, nproc=2) == 0
    return losses(run_dir)


def test_sigkill_resume_is_bit_exact_two_processes(tmp_path, straight2):
    run_dir = tmp_path / "run"
    _kill_after_checkpoint_and_resume(run_dir, 2)
    assert losses(run_dir) == straight2
    assert len(straight2) == STEPS


@pytest.mark.slow
def test_signal_to_one_rank_stops_all_ranks_after_a_save(tmp_path, straight2):
    """SIGUSR1 to rank 1 only: the all-reduced flag makes rank 0 save and stop too."""
    run_dir = tmp_path / "run"
    long = ["train.train_steps=1000", "optim.schedule.total_tokens=5120",
            "checkpoint.interval_steps=0"]
    proc = start_train(run_dir, long, nproc=2)
    wait_for(lambda: steps_logged(run_dir) >= 3, proc, what="3 steps")
    workers = [p for p in _descendants(proc.pid) if "launcher" in _cmdline(p)]
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGUSR1)  # the later-started worker
    proc.wait(timeout=120)  # torchrun reports the workers' exit 3 as a failure of its own
    log = run_dir.with_suffix(".log").read_text()
    for rank in (0, 1):  # both ranks saw the flag, saved, passed the barrier
        assert f"[r{rank} tp0 pp0 ep0 dp{rank}] stopping: signal received" in log
    assert "exitcode: 3" in log  # a worker's exit status 3 reached torchrun
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 3 <= stopped_at < STEPS and steps_logged(run_dir) == stopped_at
    assert run_train(run_dir, RUN, nproc=2) == 0
    assert _resumed_step(run_dir) == [stopped_at]
    assert losses(run_dir) == straight2


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_kill_during_save_resumes_previous_checkpoint(tmp_path, straight):
    run_dir = tmp_path / "run"
    # the step-20 save dies after writing the model/optimizer files (os._exit, no cleanup)
    rc = run_train(run_dir, RUN, env={"EXAONE_TRAIN_FAULT": "kill_during_save@20"})
    assert rc == 137
    ckpts = run_dir / "checkpoints"
    assert (ckpts / ".tmp_iter_0000020" / "model").is_dir()  # the half-written save
    assert not (ckpts / "iter_0000020").exists()
    assert (ckpts / "latest").read_text().strip() == "iter_0000010"
    manifest = json.loads((ckpts / "iter_0000010" / "manifest.json").read_text())
    assert manifest["step"] == 10
    assert run_train(run_dir, RUN) == 0
    assert _resumed_step(run_dir) == [10]
    assert losses(run_dir) == straight
    assert (ckpts / "latest").read_text().strip() == "iter_0000020"
    assert not (ckpts / ".tmp_iter_0000020").exists()  # cleaned once a newer one verified


def test_sigusr1_saves_exits_3_and_resume_continues(tmp_path, straight):
    run_dir = tmp_path / "run"
    # a long run with the straight run's schedule (same total tokens), stopped by SIGUSR1
    long = ["train.train_steps=1000", "optim.schedule.total_tokens=5120",
            "checkpoint.interval_steps=0"]
    proc = start_train(run_dir, long)
    wait_for(lambda: steps_logged(run_dir) >= 3, proc, what="3 steps")
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 3
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[1])
    assert 3 <= stopped_at < STEPS
    assert steps_logged(run_dir) == stopped_at  # saved at the step boundary after the signal
    assert run_train(run_dir, RUN) == 0
    assert _resumed_step(run_dir) == [stopped_at]
    assert losses(run_dir) == straight
