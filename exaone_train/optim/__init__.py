"""Optimizer and LR schedule: Muon on hidden matrices + AdamW elsewhere, token-positioned WSD."""

from exaone_train.optim.clip import clip_grad_norm_, grad_norm
from exaone_train.optim.config import OptimConfig, ScheduleConfig, validate_optim
from exaone_train.optim.groups import (
                                       build_optimizer,
                                       classify_params,
                                       format_classification,
                                       param_groups,
)
from exaone_train.optim.megatron_wrap import build_megatron_optimizer
from exaone_train.optim.muon import MuonAdamW, newton_schulz
from exaone_train.optim.schedule import WSDSchedule, lr_at, lr_factor_at

__all__ = ["OptimConfig", "ScheduleConfig", "validate_optim", "build_optimizer",
           "classify_params", "format_classification", "param_groups", "MuonAdamW",
           "newton_schulz", "WSDSchedule", "lr_at", "lr_factor_at", "grad_norm",
           "clip_grad_norm_", "build_megatron_optimizer"]
