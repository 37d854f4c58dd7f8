"""The distributed optimizer for MuonAdamW: ZeRO-1 by whole parameters (layer-wise).

megatron-core's `DistributedOptimizer` shards flat grad buffers across DP ranks, cutting
matrices apart; Muon needs whole matrices. So, as megatron-core 0.16.1 does for its own Muon
(`optimizer/layer_wise_optimizer.py::LayerWiseDistributedOptimizer`, which this subclasses):

1. every parameter is owned by one rank of the group that replicates it: dense parameters by
   one rank of the DP x CP group, routed-expert parameters by one rank of the expert-DP group
   (`assign_owners`: largest first onto the least-loaded rank, by element count);
2. megatron DDP still all-reduces full grads (DDP runs with `use_distributed_optimizer=False`);
3. each rank's MuonAdamW holds and steps only the parameters it owns, so its state (Muon
   momentum, AdamW moments) and, under bf16, its fp32 master weights exist only there;
4. the grad norm is summed over owners (`clip.grad_norm(..., dp_sharded=True)`);
5. after the step the owners' updated parameters are all-gathered to every rank
   (`allgather_params`: padded, bucketed `all_gather`, so it also runs on gloo, which has no
   uneven all-gather).

Ownership is the same on every TP / expert-TP rank of a DP position (the same parameter list
and shapes), so MuonAdamW's TP gathers stay matched. Checkpoints keep the non-distributed
format: each state tensor is written once, by its owner (`checkpoint/optimizer_state.py`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer.layer_wise_optimizer import LayerWiseDistributedOptimizer
from megatron.core.optimizer.optimizer import MegatronOptimizer
from megatron.core.process_groups_config import ProcessGroupCollection
from torch import Tensor

# Elements each rank contributes to one all-gather round: bounds the gather buffer to
# DP x this many elements (a larger parameter goes alone, in one round).
GATHER_BUCKET_NUMEL = 1 << 26


def assign_owners(numels: list[int], n_ranks: int) -> list[int]:
    """Owner rank of each parameter (by element count): largest first, each onto the rank with
    the fewest elements so far (ties: lowest rank). Deterministic: every rank computes it."""
    load = [0] * n_ranks
    owners = [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        rank = min(range(n_ranks), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += numels[i]
    return owners


def _buckets(params: list[Tensor], max_numel: int) -> list[list[Tensor]]:
    out: list[list[Tensor]] = []
    current: list[Tensor] = []
    size = 0
    for p in params:
        if current and size + p.numel() > max_numel:
            out.append(current)
            current, size = [], 0
        current.append(p)
        size += p.numel()
    return out + [current] if current else out


@torch.no_grad()
def allgather_owned(params_by_rank: list[list[Tensor]], group: Any,
                    bucket_numel: int = GATHER_BUCKET_NUMEL) -> None:
    """Copy every rank's parameters in `params_by_rank[rank]` to the other ranks of `group`."""
    world = len(params_by_rank)
    if world == 1:
        return
    rank = dist.get_rank(group)
    dtypes = sorted({p.dtype for ps in params_by_rank for p in ps}, key=str)
    for dtype in dtypes:
        buckets = [_buckets([p for p in ps if p.dtype == dtype], bucket_numel)
                   for ps in params_by_rank]
        for r in range(max(len(b) for b in buckets)):
            _gather_round([b[r] if r < len(b) else [] for b in buckets], rank, group, dtype)


def _gather_round(parts: list[list[Tensor]], rank: int, group: Any, dtype: torch.dtype) -> None:
    sizes = [sum(p.numel() for p in part) for part in parts]
    width = max(sizes)
    if width == 0:
        return
    device = next(p.device for part in parts for p in part)
    out = torch.empty(len(parts), width, dtype=dtype, device=device)
    src = torch.zeros(width, dtype=dtype, device=device)
    if parts[rank]:
        torch.cat([p.detach().reshape(-1) for p in parts[rank]], out=src[:sizes[rank]])
    dist.all_gather(list(out.unbind(0)), src, group=group)
    for k, part in enumerate(parts):
        if k == rank:
            continue
        offset = 0
        for p in part:
            p.detach().copy_(out[k, offset:offset + p.numel()].view_as(p))
            offset += p.numel()


class LayerWiseMuonAdamW(LayerWiseDistributedOptimizer):
    """megatron's layer-wise distributed optimizer around one FP32Optimizer(MuonAdamW),
    wrapped after sharding in Float16OptimizerWithFloat16Params for bf16 (so fp32 master
    weights exist only for owned parameters). Differences from megatron's class: balanced
    assignment by size (`assign_owners`), experts sharded over expert-DP even when DP x CP is
    1, a padded bucketed all-gather (gloo has no uneven all-gather, and a full-model gather
    buffer would double parameter memory), and the gather runs in `step_with_ready_grads`
    (the trainer steps through it after its own grad norm, clip and stability guard)."""

    dp_sharded = True  # clip.grad_norm sums over owners

    def __init__(self, inner: MegatronOptimizer, config: OptimizerConfig, dp_cp_group: Any,
                 expert_dp_group: Any) -> None:
        pgs = ProcessGroupCollection()
        pgs.dp_cp, pgs.expt_dp = dp_cp_group, expert_dp_group
        super().__init__([inner], config, pgs)

    def shard_params(self, optimizers: list[MegatronOptimizer]) -> None:
        """Keep in each param group only the parameters this rank owns; record every rank's
        owned list per group (dense over DP x CP, experts over expert-DP) for the gather."""
        groups = [g for opt in optimizers for g in opt.param_groups]
        self.owned: list[tuple[Any, list[list[Tensor]]]] = []
        kept: list[list[Tensor]] = [[] for _ in groups]
        for expert, pg in ((False, self.pg_collection.dp_cp), (True, self.pg_collection.expt_dp)):
            entries = [(gi, p) for gi, g in enumerate(groups) if bool(g.get("expert")) == expert
                       for p in g["params"]]
            size, rank = dist.get_world_size(pg), dist.get_rank(pg)
            owners = assign_owners([p.numel() for _, p in entries], size)
            by_rank: list[list[Tensor]] = [[] for _ in range(size)]
            for (gi, p), owner in zip(entries, owners, strict=True):
                by_rank[owner].append(p)
                if owner == rank:
                    kept[gi].append(p)
            self.owned.append((pg, by_rank))
        for g, params in zip(groups, kept, strict=True):
            g["params"] = params
        # megatron's names (its broadcast_params / allgather_params read them)
        self.dp_cp_params_list, self.expt_dp_params_list = (by for _, by in self.owned)

    @torch.no_grad()
    def allgather_params(self) -> None:
        """Every rank's (model) parameters from their owners, within each replica group."""
        for group, by_rank in self.owned:
            allgather_owned(by_rank, group)

    @torch.no_grad()
    def step_with_ready_grads(self) -> bool:
        success = super().step_with_ready_grads()  # owners: inner step, main -> model copy
        self.allgather_params()
        return success

    @torch.no_grad()
    def step(self):  # type: ignore[no-untyped-def]
        # ChainedOptimizer.step ends in step_with_ready_grads, which gathers (megatron's
        # LayerWiseDistributedOptimizer.step would gather a second time).
        return super(LayerWiseDistributedOptimizer, self).step()
