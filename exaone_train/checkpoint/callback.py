"""The trainer's checkpoint hooks: restore at construction, save by step and wall-clock cadence,
save-and-stop on SIGTERM/SIGUSR1, final save at the end of `fit()`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from exaone_train.checkpoint import preemption
from exaone_train.checkpoint.manager import CheckpointManager, set_rng_state
from exaone_train.parallel import state
from exaone_train.train.hooks import Callback, StopTraining, TrainerView

if TYPE_CHECKING:
    from exaone_train.train.step import StepResult

log = logging.getLogger("exaone_train")


class CheckpointCallback(Callback):
    def __init__(self, manager: CheckpointManager) -> None:
        self.manager, self.cfg = manager, manager.cfg
        self.pending_rng: dict = {}

    def restore(self, trainer: TrainerView, path: Path | None = None, load_data: bool = True) -> None:
        """Load `path`, else the checkpoint to resume from, if any (collective; in
        Trainer.__init__)."""
        path = path if path is not None else self.manager.resume_path()
        if path is not None:
            self.pending_rng = self.manager.load(trainer, path, load_data)

    def on_train_start(self, trainer: TrainerView) -> None:
        # Our SIGTERM/SIGUSR1 handlers live exactly as long as the loop (on_train_end runs in
        # fit()'s finally): left installed, they would be inherited by processes forked later
        # (e.g. a data-build worker pool), which SIGTERM then no longer stops.
        if self.cfg.exit_on_signal:
            preemption.install()
        if self.pending_rng:  # after main()'s seeding, so the resumed run continues the streams
            set_rng_state(self.pending_rng)
            self.pending_rng = {}

    def _decide(self) -> tuple[bool, bool]:
        """(signal received on any rank, wall-clock interval passed on any rank): collective."""
        sig = preemption.received() is not None
        due = (self.cfg.interval_minutes > 0 and
               time.monotonic() - self.manager.last_save_time >= 60 * self.cfg.interval_minutes)
        flags = torch.tensor([float(sig), float(due)], device=state.device())
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None:
        sig, due = self._decide()
        by_steps = self.cfg.interval_steps > 0 and trainer.step % self.cfg.interval_steps == 0
        if self.cfg.enabled and (sig or due or by_steps):
            self.manager.save(trainer)
        if sig:
            if not self.cfg.enabled:
                self.manager.save(trainer)  # a signal always saves: the job is going away
            preemption.mark_stopped_for_requeue()
            raise StopTraining(f"signal received: checkpoint saved at step {trainer.step}, "
                               f"exiting with status {preemption.REQUEUE_EXIT_CODE} (requeue)")

    def on_train_end(self, trainer: TrainerView) -> None:
        preemption.uninstall()  # the process's own handlers back, even when the loop raised

    def finish(self, trainer: TrainerView) -> None:
        """The final save when the loop ended without an error (collective)."""
        if (self.cfg.enabled and self.cfg.save_final and trainer.step > 0
                and self.manager.last_saved_step != trainer.step):
            self.manager.save(trainer, final=trainer.done())
        elif self.cfg.enabled and trainer.done() and self.manager.last_saved_step == trainer.step:
            self.manager.mark_keep(trainer.step)
