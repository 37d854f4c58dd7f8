"""The callback protocol: what the loop calls (`Callback`), how a callback ends the run
(`StopTraining`) and what it may read of the trainer (`TrainerView`). A leaf module: it imports
nothing of the package at run time, so callbacks (train/callbacks.py, checkpoint/callback.py)
depend on it and not on the trainer.

A callback with state that must survive a restart (the stability guard's loss window) returns
it from `state_dict()` (JSON-able); `Trainer.state_dict()` gathers it into train_state.json
under its `key()` and `Trainer.load_state_dict()` hands it back on resume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from exaone_train.train.step import StepResult


class StopTraining(Exception):
    """Raised by a callback to end the run cleanly (after a final checkpoint)."""


class TrainerView(Protocol):
    """The trainer as callbacks see it (exaone_train.train.trainer.Trainer implements it)."""

    step: int
    consumed_tokens: int
    global_batch_tokens: int
    micro_batches: int
    stage_name: str
    prefix: str
    metrics: dict[str, Any]
    model: list
    optimizer: Any

    def stage_steps(self) -> int: ...
    def stage_tokens(self) -> int: ...
    def done(self) -> bool: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict, load_data: bool = True) -> None: ...


class Callback:
    def on_train_start(self, trainer: TrainerView) -> None: ...
    def on_step_start(self, trainer: TrainerView) -> None: ...
    def on_step_end(self, trainer: TrainerView, result: StepResult) -> None: ...
    def on_train_end(self, trainer: TrainerView) -> None: ...

    def key(self) -> str:
        """The name this callback's state is saved under (its class name)."""
        return type(self).__name__

    def state_dict(self) -> dict:
        """State to carry over a restart (JSON-able); {} for none (not saved)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned (on resume, before the loop starts)."""


def callback_states(callbacks: list[Callback]) -> dict[str, dict]:
    """{key: state} of the callbacks that have state; a key used twice is a bug."""
    out: dict[str, dict] = {}
    for c in callbacks:
        s = c.state_dict()
        if s:
            assert c.key() not in out, f"two callbacks save their state as {c.key()!r}"
            out[c.key()] = s
    return out


def load_callback_states(callbacks: list[Callback], states: dict[str, dict]) -> None:
    """Hand each callback its saved state (a callback absent from `states` keeps its own)."""
    for c in callbacks:
        if c.key() in states:
            c.load_state_dict(states[c.key()])
