"""Wrap our torch optimizer (MuonAdamW) in megatron-core's optimizer classes, which give the
trainer what it needs around it: main_grad -> grad, fp32 master weights for bf16 params, a grad
norm counted once across TP/PP/EP, and sharded (reshardable) state for dist_checkpointing."""

from __future__ import annotations

from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params, FP32Optimizer

from exaone_train.errors import ConfigError
from exaone_train.optim.config import OptimConfig
from exaone_train.optim.groups import build_optimizer


def build_megatron_optimizer(chunks: list, cfg: OptimConfig):
    """MuonAdamW over `chunks` (megatron DDP-wrapped), inside FP32Optimizer or, for bf16
    params, Float16OptimizerWithFloat16Params (fp32 master weights and grads)."""
    ddp_cfg = chunks[0].ddp_config
    if ddp_cfg.use_distributed_optimizer:
        raise ConfigError("parallel.distributed_optimizer", True,
                          "is not supported with our Muon/AdamW optimizer yet (its state is "
                          "per whole matrix); set parallel.distributed_optimizer=false")
    bf16 = chunks[0].config.bf16
    inner = build_optimizer(chunks, cfg)
    mcfg = OptimizerConfig(optimizer="adam", lr=cfg.lr_peak, weight_decay=cfg.weight_decay,
                           clip_grad=cfg.clip_grad, bf16=bf16,
                           params_dtype=chunks[0].config.params_dtype)
    if bf16:
        return Float16OptimizerWithFloat16Params(inner, mcfg, grad_scaler=None,
                                                 init_state_fn=None)
    return FP32Optimizer(inner, mcfg, init_state_fn=None)
