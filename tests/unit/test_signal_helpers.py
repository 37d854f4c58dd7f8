"""Slurm delivers a step signal (the relayed time-limit USR1, scancel's TERM) to every process
of the job step, not only to the trainer ranks. Helper processes started by exec (megatron's
checkpoint-writer Manager) must survive it: they start with the signals blocked
(`preemption.blocked_while`), and the rank's own signal is only deferred, not lost."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

from exaone_train.checkpoint import preemption
from exaone_train.checkpoint.manager import start_writer_helper


def _alive_after_usr1(pid: int) -> bool:
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)
    try:
        os.waitpid(pid, os.WNOHANG)
        os.kill(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return False
    with open(f"/proc/{pid}/status") as f:
        return "zombie" not in f.read()


def test_helper_started_blocked_survives_usr1_and_the_rank_gets_its_signal():
    preemption.install()
    try:
        plain = mp.get_context("spawn").Manager()  # the control: started as megatron does
        assert not _alive_after_usr1(plain._process.pid)  # the default action kills it

        def start():
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives while blocked: pending
            assert preemption.received() is None
            return mp.get_context("spawn").Manager()

        guarded = preemption.blocked_while(start)
        assert preemption.received() == signal.SIGUSR1  # delivered once the mask is restored
        assert _alive_after_usr1(guarded._process.pid)
        q = guarded.Queue()
        q.put("still answers")
        assert q.get() == "still answers"
        guarded.shutdown()
    finally:
        preemption.uninstall()


def test_checkpoint_writer_manager_survives_a_step_wide_usr1():
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    preemption.install()
    try:
        start_writer_helper()  # what CheckpointManager.save calls first
        queue = filesystem_async._results_queue
        manager_pid = queue._manager._process.pid if hasattr(queue, "_manager") else None
        if manager_pid is None:  # the proxy does not keep its manager: find the child
            import psutil

            manager_pid = psutil.Process().children()[-1].pid
        assert _alive_after_usr1(manager_pid)
        queue.put(1)
        assert queue.get() == 1
    finally:
        preemption.uninstall()
