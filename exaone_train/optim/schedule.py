"""Warmup-stable-decay (WSD) learning rate over the whole curriculum, positioned by consumed
tokens: a batch-size change between stages leaves the LR a function of tokens alone.

`lr_factor_at` has the shape of `transformers.get_wsd_schedule` (warmup from the minimum,
half-cosine decay with num_cycles=0.5), with steps replaced by tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from exaone_train.errors import ConfigError
from exaone_train.optim.config import (
    OptimConfig,
    ScheduleConfig,
    decay_tokens_of,
    validate_schedule,
)

if TYPE_CHECKING:  # the LR functions are pure arithmetic: `plan` must not import torch
    from torch.optim import Optimizer


def _shape(kind: str, progress: float, rising: bool) -> float:
    """Fraction of the way from min to peak for a warmup (rising) or decay phase."""
    if kind == "linear":
        return progress if rising else 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress)) if rising else \
            0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "1-sqrt":
        return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)
    raise ConfigError("optim.schedule.shape", kind, "must be one of linear, cosine, 1-sqrt")


def lr_factor_at(tokens_consumed: int, s: ScheduleConfig) -> float:
    """LR as a fraction of the peak after `tokens_consumed` tokens (in [lr_min_ratio, 1])."""
    if s.total_tokens is None:
        raise ConfigError("optim.schedule.total_tokens", None,
                          "must be set (the trainer fills it from the curriculum)")
    lo = s.lr_min_ratio
    decay = decay_tokens_of(s)
    decay_start = s.total_tokens - decay
    if tokens_consumed < s.warmup_tokens:
        start = lo if s.lr_warmup_start_ratio is None else s.lr_warmup_start_ratio
        frac = _shape(s.warmup_shape, tokens_consumed / max(1, s.warmup_tokens), rising=True)
        return max(0.0, start + frac * (1.0 - start))
    if tokens_consumed < decay_start:
        return 1.0
    if tokens_consumed < s.total_tokens:
        frac = _shape(s.decay_shape, (tokens_consumed - decay_start) / max(1, decay), rising=False)
        return max(0.0, lo + frac * (1.0 - lo))
    return lo


def lr_at(tokens_consumed: int, cfg: OptimConfig) -> float:
    """Base LR (before per-group multipliers) after `tokens_consumed` tokens."""
    return cfg.lr_peak * lr_factor_at(tokens_consumed, cfg.schedule)


class WSDSchedule:
    """Sets `group["lr"] = lr_at(tokens) * group["lr_multiplier"]` on every param group.

    Holds no position of its own: the trainer passes the consumed-token count it checkpoints,
    so resuming (under any batch size) needs no scheduler state.
    """

    def __init__(self, optimizer: Optimizer, cfg: OptimConfig) -> None:
        validate_schedule(cfg.schedule)
        if cfg.schedule.total_tokens is None:
            raise ConfigError("optim.schedule.total_tokens", None,
                              "must be set before the schedule is built")
        self.optimizer, self.cfg = optimizer, cfg
        self.last_lr: list[float] = []
        self.step(0)

    def step(self, tokens_consumed: int) -> list[float]:
        """Set the LR of every param group for position `tokens_consumed`; return them."""
        base = lr_at(tokens_consumed, self.cfg)
        self.last_lr = []
        for group in self.optimizer.param_groups:
            group["lr"] = base * group.get("lr_multiplier", 1.0)
            self.last_lr.append(group["lr"])
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {}  # position lives in the train state (consumed tokens)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
