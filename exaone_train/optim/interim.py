"""Interim optimizer + constant LR through megatron-core's AdamW, until Muon/WSD land."""

from __future__ import annotations

from dataclasses import dataclass

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer


@dataclass
class InterimOptimConfig:
    lr_peak: float = 3e-3
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95


class _ConstantLR:
    def __init__(self, optimizer, lr: float) -> None:
        self.optimizer, self.lr = optimizer, lr

    def apply(self, consumed_tokens: int) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr
        return self.lr


def build_optimizer(chunks, cfg: InterimOptimConfig, clip_grad: float):
    from exaone_train.model.builder import _DTYPES  # noqa: F401

    mcfg = OptimizerConfig(optimizer="adam", lr=cfg.lr_peak, weight_decay=cfg.weight_decay,
                           adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
                           clip_grad=clip_grad, bf16=chunks[0].config.bf16,
                           use_distributed_optimizer=chunks[0].ddp_config.use_distributed_optimizer)
    return get_megatron_optimizer(mcfg, chunks)


def build_schedule(cfg: InterimOptimConfig, optimizer):
    return _ConstantLR(optimizer, cfg.lr_peak)
