"""Optimizer and LR schedule: Muon on hidden matrices + AdamW elsewhere, token-positioned WSD.

The names below are imported on first use (PEP 562 `__getattr__`): the recipe schema imports
`exaone_train.optim.config`, and importing this package must not pull megatron-core into
`exaone-train plan` / `model info` (seconds of imports for arithmetic).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "OptimConfig": "config", "ScheduleConfig": "config", "validate_optim": "config",
    "grad_norm": "clip", "clip_grad_norm_": "clip",
    "build_optimizer": "groups", "classify_params": "groups",
    "format_classification": "groups", "param_groups": "groups",
    "build_megatron_optimizer": "megatron_wrap",
    "MuonAdamW": "muon", "newton_schulz": "muon",
    "WSDSchedule": "schedule", "lr_at": "schedule", "lr_factor_at": "schedule",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
