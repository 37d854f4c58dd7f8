"""Global gradient norm and clipping for `MuonAdamW`, counting every parameter once across
TP / PP / EP ranks (megatron-core's rules: TP-duplicated and `shared` copies are skipped; dense
grads are summed over the model-parallel group, routed-expert grads over the expert
TP x EP x PP group). With the layer-wise distributed optimizer each rank steps only the
parameters it owns: the sums are then over every rank (see `grad_norm`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from exaone_train.optim.muon import grad_of


def _counted_once(p: torch.Tensor, tp_rank0: bool) -> bool:
    if getattr(p, "shared", False):
        return False
    return tp_rank0 or getattr(p, "tensor_model_parallel", False)


def _grads(optimizer: Optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(dense, routed-expert) grads held by this rank that count towards the norm."""
    from megatron.core import parallel_state as ps

    tp_rank0 = not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_rank() == 0
    dense: list[torch.Tensor] = []
    expert: list[torch.Tensor] = []
    for group in optimizer.param_groups:
        into = expert if group.get("expert", False) else dense
        for p in group["params"]:
            g = grad_of(p)
            if g is not None and _counted_once(p, tp_rank0):
                into.append(g)
    return dense, expert


@torch.no_grad()
def _sum_squares(dense: list[torch.Tensor], expert: list[torch.Tensor],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense, expert) sums of squares in float64, from one fused per-tensor norm (upcast before
    accumulating) instead of several small ops per parameter, which dominate small models."""
    if not dense and not expert:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return zero, zero.clone()
    squares = torch.stack(torch._foreach_norm(dense + expert, 2, dtype=torch.float64)).square()
    return squares[:len(dense)].sum(), squares[len(dense):].sum()


def grad_norm(optimizer: Optimizer, dp_sharded: bool = False) -> float:
    """L2 norm of the whole model's gradient (the same on every rank).

    `dp_sharded`: `optimizer` holds only the parameters this rank owns, each owned by one rank
    of its DP x CP (dense) or expert-DP (routed experts) group (`optim.layer_wise`). The owners
    of one replica set partition it, so the dense sum over TP x PP x DP x CP and the expert sum
    over expert-TP x EP x PP x expert-DP are both sums over every rank: one all-reduce."""
    from megatron.core import parallel_state as ps

    from exaone_train.parallel.state import device  # (lazy: config.schema imports optim)

    dense, expert = _sum_squares(*_grads(optimizer), device())
    if dp_sharded and dist.is_initialized():
        sums = torch.stack([dense, expert])
        dist.all_reduce(sums)
        dense, expert = sums[0], sums[1]
    elif ps.model_parallel_is_initialized() and dist.is_initialized():
        dist.all_reduce(dense, group=ps.get_model_parallel_group())
        dist.all_reduce(expert, group=ps.get_expert_tensor_model_pipeline_parallel_group())
    return float((dense + expert).sqrt())


def clip_grad_norm_(optimizer: Optimizer, max_norm: float, norm: float | None = None) -> float:
    """Scale every grad by min(1, max_norm / norm) (max_norm <= 0: no clipping); return the
    norm before clipping. `norm`: `grad_norm(optimizer)` already computed for these grads
    (saves a second pass over every parameter)."""
    if norm is None:
        norm = grad_norm(optimizer)
    if max_norm > 0 and norm > max_norm:
        grads = [g for group in optimizer.param_groups for p in group["params"]
                 if (g := grad_of(p)) is not None]
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
