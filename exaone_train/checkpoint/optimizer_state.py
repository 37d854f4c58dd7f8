"""The optimizer's state as megatron-core dist_checkpointing ShardedTensors, fully
reshardable, and `full_state`: model + optimizer, the state dict a training checkpoint saves.

Model: `model_state.model_state` (`model_checkpoint.sharded_model_state_dict`: per-layer global
keys), so a training checkpoint's `model/` is also a model checkpoint
(`model_checkpoint.load_model_checkpoint`, HF export).

Optimizer: megatron's wrappers (`FP32Optimizer.sharded_state_dict`) assume `init_state_fn`
and save `param_groups` as a rank-0 common object, which breaks under PP (each stage has its
own groups) and for our MuonAdamW (Muon params have no `step`). So each state tensor of each
parameter is written as a ShardedTensor keyed `optimizer.state.<name>.<model key>` (megatron's
own naming, via `make_sharded_optimizer_tensor`), with the model parameter's sharding: a TP /
EP / PP / DP change reshards it like the weight. Hyperparameters come from the recipe, the LR
from the WSD schedule (a function of consumed tokens); the AdamW step count (shared by every
AdamW parameter) goes in the train state. bf16 runs also save the fp32 master weights as
`optimizer.state.fp32_param.<model key>`.

Distributed optimizer (`optim.layer_wise`): a rank holds state only for the parameters it
owns, so it saves and asks to load only those; its copy is marked the main replica in the DP
dimension (the model weight's own main replica is DP rank 0, which may not own it). The files
are the same as without it: each state tensor once, with the weight's sharding, so either
setting (and any layout) loads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

from exaone_train.checkpoint.model_state import model_state
from exaone_train.parallel.state import device as rank_device


def megatron_optimizers(optimizer: Any) -> list:
    """The MegatronOptimizers inside `optimizer` (a ChainedOptimizer, e.g. the layer-wise
    distributed optimizer, holds a list)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def param_pairs(optimizer: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(model parameter, the parameter the inner optimizer steps) for every parameter this
    rank's optimizer steps (with the distributed optimizer: the ones it owns)."""
    for opt in megatron_optimizers(optimizer):
        if hasattr(opt, "float16_groups"):  # Float16OptimizerWithFloat16Params (bf16)
            for model_group, main_group in zip(opt.float16_groups,
                                               opt.fp32_from_float16_groups, strict=False):
                yield from zip(model_group, main_group, strict=False)
            for group in opt.fp32_from_fp32_groups:
                yield from ((p, p) for p in group)
            continue
        for group in opt.optimizer.param_groups:
            yield from ((p, p) for p in group["params"])


def materialize_state(optimizer: Any) -> None:
    """Create every state tensor a step would create (zeros, step 0): identical to a fresh
    state for MuonAdamW, and gives the load a tensor to fill for every parameter."""
    inner = optimizer.optimizer
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state[p]
            if group["algorithm"] == "muon":
                state.setdefault("momentum_buffer", torch.zeros_like(p))
            elif not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _sharded_by_param(model_sd: dict) -> dict[int, ShardedTensor | ShardedTensorFactory]:
    out: dict[int, Any] = {}
    for v in nested_values(model_sd):
        if isinstance(v, (ShardedTensor, ShardedTensorFactory)) and isinstance(v.data,
                                                                                 torch.Tensor):
            out.setdefault(id(v.data), v)
    return out


def _owner_replica(sharded: Any) -> Any:
    """The model tensor's sharding with this rank as the DP main replica: megatron's
    replica_id is (pipeline, TP, DP) (DP = DP x CP rank, expert-DP rank for experts); TP
    duplicates keep their TP index, so one TP rank writes a TP-replicated parameter's state."""
    rid = sharded.replica_id
    return replace(sharded, replica_id=(*rid[:-1], 0) if isinstance(rid, tuple) else 0)


def optimizer_state(optimizer: Any, model_sd: dict) -> dict:
    """{index: {state name: ShardedTensor}} for every parameter this rank steps (see module
    docstring)."""
    materialize_state(optimizer)
    inner = optimizer.optimizer
    by_param = _sharded_by_param(model_sd)
    owner = getattr(optimizer, "dp_sharded", False)
    out: dict[str, dict] = {}
    for i, (model_p, main_p) in enumerate(param_pairs(optimizer)):
        sharded = by_param.get(id(model_p))
        if sharded is None:
            raise RuntimeError(f"optimizer parameter {tuple(model_p.shape)} has no sharded "
                               "model tensor (not in the model's sharded_state_dict)")
        if owner:
            sharded = _owner_replica(sharded)
        entry = {k: make_sharded_optimizer_tensor(sharded, v, f"optimizer.state.{k}")
                 for k, v in inner.state[main_p].items() if k != "step"}
        if main_p is not model_p:
            entry["fp32_param"] = make_sharded_optimizer_tensor(
                sharded, main_p, "optimizer.state.fp32_param")
        out[str(i)] = entry
    return out


def load_optimizer_from(optimizer: Any, loaded: dict, adamw_step: float) -> None:
    inner = optimizer.optimizer
    for i, (_model_p, main_p) in enumerate(param_pairs(optimizer)):
        entry = loaded[str(i)]
        state = inner.state[main_p]
        with torch.no_grad():
            for k, v in entry.items():
                if k == "fp32_param":
                    main_p.copy_(v)
                else:
                    state[k].copy_(v)
        if "step" in state:
            state["step"].fill_(adamw_step)


def adamw_step(optimizer: Any) -> float:
    """The step count every AdamW parameter shares (0 before the first step). Collective with
    the distributed optimizer (a rank may own no AdamW parameter): call it on every rank."""
    steps = {float(s["step"]) for s in optimizer.optimizer.state.values() if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(f"AdamW step counts differ across parameters: {sorted(steps)}")
    step = steps.pop() if steps else 0.0
    if getattr(optimizer, "dp_sharded", False) and dist.is_initialized():
        t = torch.tensor([step], dtype=torch.float64, device=rank_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        step = float(t.item())
    return step


def full_state(chunks: list, optimizer: Any) -> dict:
    """The state dict dist_checkpointing saves and loads: model (+ optimizer)."""
    sd = model_state(chunks)
    sd["optimizer"] = optimizer_state(optimizer, sd)
    return sd
