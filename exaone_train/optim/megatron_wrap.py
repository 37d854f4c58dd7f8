"""Wrap our torch optimizer (MuonAdamW) in megatron-core's optimizer classes, which give the
trainer what it needs around it: main_grad -> grad, fp32 master weights for bf16 params, and,
with `distributed=True`, optimizer state sharded over data-parallel ranks by whole parameters
(`layer_wise.LayerWiseMuonAdamW`). The grad norm is `optim.clip` (counted once across
TP/PP/EP, and across DP owners when sharded)."""

from __future__ import annotations

from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params, FP32Optimizer

from exaone_train.optim.config import OptimConfig
from exaone_train.optim.groups import build_optimizer


def build_megatron_optimizer(chunks: list, cfg: OptimConfig, distributed: bool = False):
    """MuonAdamW over `chunks` (megatron DDP-wrapped, which must all-reduce full grads: DDP's
    own `use_distributed_optimizer` stays off). Not distributed: inside FP32Optimizer or, for
    bf16 params, Float16OptimizerWithFloat16Params (fp32 master weights and grads).
    `distributed`: inside LayerWiseMuonAdamW, each DP rank owning whole parameters."""
    if chunks[0].ddp_config.use_distributed_optimizer:
        raise ValueError("build the DDP chunks with use_distributed_optimizer=False: the "
                         "layer-wise optimizer needs full all-reduced grads on every rank")
    bf16 = chunks[0].config.bf16
    inner = build_optimizer(chunks, cfg)
    mcfg = OptimizerConfig(optimizer="adam", lr=cfg.lr_peak, weight_decay=cfg.weight_decay,
                           clip_grad=cfg.clip_grad, bf16=bf16,
                           params_dtype=chunks[0].config.params_dtype)
    if distributed:
        from megatron.core import parallel_state as ps

        from exaone_train.optim.layer_wise import LayerWiseMuonAdamW

        # bf16: LayerWiseMuonAdamW adds the fp32 master weights after sharding (owned only)
        return LayerWiseMuonAdamW(FP32Optimizer(inner, mcfg, init_state_fn=None), mcfg,
                                  ps.get_data_parallel_group(with_context_parallel=True),
                                  ps.get_expert_data_parallel_group())
    if bf16:
        return Float16OptimizerWithFloat16Params(inner, mcfg, grad_scaler=None,
                                                 init_state_fn=None)
    return FP32Optimizer(inner, mcfg, init_state_fn=None)
