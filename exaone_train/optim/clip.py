"""Global gradient norm and clipping for `MuonAdamW`, counting every parameter once across
TP / PP / EP ranks (megatron-core's rules: TP-duplicated and `shared` copies are skipped; dense
grads are summed over the model-parallel group, routed-expert grads over the expert
TP x EP x PP group)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from exaone_train.optim.muon import grad_of


def _counted_once(p: torch.Tensor) -> bool:
    from megatron.core import parallel_state as ps

    if getattr(p, "shared", False):
        return False
    if getattr(p, "tensor_model_parallel", False) or not ps.model_parallel_is_initialized():
        return True
    return ps.get_tensor_model_parallel_rank() == 0


def _sum_squares(optimizer: Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense, routed-expert) sums of squared grads held by this rank, counted once."""
    dense, expert = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for group in optimizer.param_groups:
        for p in group["params"]:
            g = grad_of(p)
            if g is None or not _counted_once(p):
                continue
            sq = g.detach().double().pow(2).sum().cpu()
            if group.get("expert", False):
                expert += sq
            else:
                dense += sq
    return dense, expert


def grad_norm(optimizer: Optimizer) -> float:
    """L2 norm of the whole model's gradient (the same on every rank)."""
    from megatron.core import parallel_state as ps

    dense, expert = _sum_squares(optimizer)
    if ps.model_parallel_is_initialized() and dist.is_initialized():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dense, expert = dense.to(device), expert.to(device)
        dist.all_reduce(dense, group=ps.get_model_parallel_group())
        dist.all_reduce(expert, group=ps.get_expert_tensor_model_pipeline_parallel_group())
    return float((dense + expert).sqrt())


def clip_grad_norm_(optimizer: Optimizer, max_norm: float) -> float:
    """Scale every grad by min(1, max_norm / norm) (max_norm <= 0: no clipping); return the
    norm before clipping."""
    norm = grad_norm(optimizer)
    if max_norm > 0 and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = grad_of(p)
                if g is not None:
                    g.mul_(coef)
    return norm
