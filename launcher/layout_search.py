"""`parallel: {auto: true}` for a curriculum stage: search TP / PP / VPP / EP / expert-TP / CP,
activation recompute and the distributed optimizer for the stage's sequence length on the job's
world size and GPU memory; keep the layouts that fit (the memory model of
`launcher/resource_plan.py`, `make_plan`), rank them by a step-time estimate
(`step_time_estimate`) and take the fastest.

The driver resolves every auto stage before the first step (`resolve_stage_layouts`), logs the
winner and writes it to plan.json; `exaone-train plan` and `exaone-train launch` run the same
search for the world they are given. A world where no layout fits is a ConfigError naming the
smallest world (of whole nodes) where one does.

Step-time estimate (a ranking model: its constants are nominal, not measured here):
  compute   FLOPs/token x tokens/step / (GPUs x peak x MFU)   (make_plan's step time)
            x 4/3 with full recompute (one more forward; forward = 1/3 of forward+backward),
            x (1 + core-attention forward FLOPs / all FLOPs) with selective recompute
            x (1 + (PP-1) / (VPP x micro-batches))            (1F1B pipeline bubble)
  + exposed communication, bytes per GPU per step / bandwidth, nothing overlapped:
    TP (sequence parallel: 4 all-gathers/reduce-scatters of the layer's activations, forward
    and backward), CP per layer type (`cp_bytes_per_layer`: K/V all-gather and dK/dV
    reduce-scatter of the whole sequence on global layers and on Transformer Engine; on the
    local attention's sliding-window layers the halo exchange, W-1 keys per chunk boundary;
    once more for the forward that selective or full recompute re-runs), EP (all-to-all dispatch and
    combine of the top-k copies), PP (activations to the next stage and gradients back), DP
    (fp32 gradient all-reduce over DP*CP, experts over ExpertDP) and the distributed optimizer's
    parameter all-gather (this trainer all-reduces full gradients and then gathers updated
    parameters: optim/layer_wise.py). A group within one node uses NVLINK_BYTES_PER_S, one that
    spans nodes NETWORK_BYTES_PER_S.
Ties go to the smaller memory footprint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exaone_train.config.schema import ParallelConfig, RecipeConfig
from exaone_train.config.validate import validate_backend, validate_batching, validate_parallel
from exaone_train.curriculum.config import StageParallelConfig
from exaone_train.errors import ConfigError
from exaone_train.model.counts import attention_context_tokens, training_flops_per_token
from exaone_train.model.layout import moe_layers as moe_layer_flags
from exaone_train.parallel.dims import ParallelDims
from exaone_train.train.hardware import detect_gpu_type, gpu_spec
from launcher.resource_plan import (
    DEFAULT_MFU,
    GIB,
    check_layout,
    cp_exchange,
    halo_tokens,
    make_plan,
)

log = logging.getLogger("exaone_train")

RECOMPUTE_ORDER = ("none", "selective", "full")  # memory falls, time rises
FULL_RECOMPUTE_TIME_FACTOR = 4 / 3
NVLINK_BYTES_PER_S = 300e9  # effective per GPU inside a node (H100 NVLink: 450 GB/s per direction)
NETWORK_BYTES_PER_S = 40e9  # per GPU across nodes (one 400 Gb/s NIC per GPU: 50 GB/s nominal)
MEMORY_HEADROOM = 0.9  # a layout fits below 90% of the GPU's memory (as make_plan's "fits")
VIRTUAL_PP_CHOICES = (2, 3, 4)
SEARCHED = ("tp", "pp", "virtual_pp", "ep", "expert_tp", "cp", "recompute",
            "distributed_optimizer")
# Node counts tried, in order, for "the smallest world that would fit".
_NODE_COUNTS = [*range(1, 17), 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


@dataclass(frozen=True)
class Budget:
    """What a layout must fit: the job's GPUs and their memory."""

    world_size: int
    gpus_per_node: int
    gpu_type: str  # key of GPU_SPECS (peak FLOP/s for the compute estimate)
    memory_gib: float

    def with_world(self, world_size: int) -> Budget:
        return dataclasses.replace(self, world_size=world_size)


def job_budget(cfg: RecipeConfig, world_size: int, gpus_per_node: int | None = None,
               gpu_type: str | None = None) -> Budget:
    """The budget of this job: GPU type as given, else `logging.gpu_type`, else detected, else
    H100 (a login node or CPU); memory of the visible GPU when there is one; GPUs per node as
    given, else torchrun's LOCAL_WORLD_SIZE, else min(world, 8)."""
    gpu = (gpu_type or cfg.logging.gpu_type or detect_gpu_type() or "h100").lower()
    memory = gpu_spec(gpu).memory_gib
    if gpu_type is None and detect_gpu_type() is not None:
        import torch

        memory = torch.cuda.get_device_properties(0).total_memory / GIB
    gpn = gpus_per_node or int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or min(world_size, 8)
    return Budget(world_size, min(gpn, world_size), gpu, memory)


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _structures(recipe: RecipeConfig, fixed: dict[str, Any],
                budget: Budget) -> Iterator[ParallelConfig]:
    """Layouts (recompute and optimizer aside) that megatron-core and this trainer accept."""
    m, t, base = recipe.model, recipe.train, recipe.parallel
    world, seq = budget.world_size, t.seq_length_tokens

    def opts(name: str, values: list) -> list:
        return [fixed[name]] if name in fixed else values

    moe = m.num_experts is not None
    for tp in opts("tp", [x for x in _divisors(budget.gpus_per_node)
                          if m.num_query_groups % x == 0 and m.ffn_hidden_size % x == 0]):
        for pp in opts("pp", [x for x in _divisors(m.num_layers) if world % (tp * x) == 0]):
            for cp in opts("cp", [x for x in _divisors(world // (tp * pp))
                                  if ParallelDims(cp=x).seq_rule(seq) is None]):
                vpps = [None] + [v for v in VIRTUAL_PP_CHOICES if pp > 1 and
                                 m.num_layers % (pp * v) == 0]
                for vpp in opts("virtual_pp", vpps):
                    for ep in opts("ep", _divisors(m.num_experts) if moe else [1]):
                        for etp in opts("expert_tp", sorted({1, tp}) if moe and ep > 1 else [tp]):
                            p = dataclasses.replace(
                                base, tp=tp, pp=pp, cp=cp, virtual_pp=vpp, ep=ep, expert_tp=etp,
                                sequence_parallel=fixed.get("sequence_parallel", tp > 1))
                            if _accepted(recipe, p, world):
                                yield p


def _accepted(recipe: RecipeConfig, p: ParallelConfig, world: int) -> bool:
    t = recipe.train
    try:
        validate_parallel(p, recipe.model)
        check_layout(p, recipe.model, world, t.seq_length_tokens)
        validate_batching(t.global_batch_samples, t.micro_batch_samples,
                          ParallelDims.of(p, world).dp, p)
        validate_backend(dataclasses.replace(recipe, parallel=p))
    except ConfigError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Step time
# --------------------------------------------------------------------------------------------


def _bandwidth(group_span_ranks: int, budget: Budget) -> float:
    return NVLINK_BYTES_PER_S if group_span_ranks <= budget.gpus_per_node else NETWORK_BYTES_PER_S


def _ring(n: int) -> float:
    return (n - 1) / n


def cp_bytes_per_layer(recipe: RecipeConfig) -> list[float]:
    """Bytes one CP rank sends per decoder layer and micro-batch (forward, backward and the
    forward again under recompute): all-gather layers gather K and V of the whole sequence
    (and reduce-scatter dK/dV), (CP-1)/CP of 2*s*b*g/TP*d*e each time; halo layers send the
    W-1 tail of each of their 2 chunks to a neighbour, 2 * 2*(W-1)*b*g/TP*d*e each time."""
    m, p, t = recipe.model, recipe.parallel, recipe.train
    e = 4 if recipe.precision.dtype == "fp32" else 2
    kv_per_token = 2 * t.micro_batch_samples * m.num_query_groups / p.tp * m.head_dim * e
    passes = 3 if p.recompute != "none" else 2  # selective/full re-run the attention forward
    sent = {"none": 0.0,
            "all_gather": kv_per_token * t.seq_length_tokens * _ring(p.cp) * passes,
            "halo": kv_per_token * 2 * (halo_tokens(m) or 0) * passes}
    return [sent[ex] for ex in cp_exchange(recipe, t.seq_length_tokens)]


def cp_bytes_per_stage(recipe: RecipeConfig, plan: dict[str, Any]) -> float:
    """`cp_bytes_per_layer` summed over the layers of the pipeline rank that holds the most."""
    per_layer = cp_bytes_per_layer(recipe)
    return max(sum(per_layer[i] for a, z in st["layer_ranges"] for i in range(a, z))
               for st in plan["pipeline"]["stages"])


def comm_seconds(recipe: RecipeConfig, plan: dict[str, Any], budget: Budget) -> dict[str, float]:
    """Exposed communication per step on the fullest pipeline rank (module doc), by kind."""
    m, p, t = recipe.model, recipe.parallel, recipe.train
    e = 4 if recipe.precision.dtype == "fp32" else 2
    lay, mbs = plan["parallel"], plan["batch"]["num_microbatches"]
    tokens = t.seq_length_tokens / p.cp * t.micro_batch_samples  # per CP rank per micro-batch
    layers = m.num_layers // p.pp
    act = tokens * m.hidden_size * e
    moe_layers = sum(moe_layer_flags(m)) // p.pp if m.num_experts else 0
    params = max(s["params"] for s in plan["pipeline"]["stages"])
    experts = max(s["expert_params"] for s in plan["pipeline"]["stages"])
    dense_d, expert_d = lay["dp"] * lay["cp"], lay["expert_dp"] or 1
    out = {
        "tp": 8 * act * _ring(p.tp) * layers * mbs / _bandwidth(p.tp, budget),
        "cp": cp_bytes_per_stage(recipe, plan) * mbs / _bandwidth(p.tp * p.cp, budget),
        "ep": 4 * act / p.tp * m.moe_top_k * _ring(p.ep) * moe_layers * mbs
        / _bandwidth(p.etp * p.ep, budget),
        "pp": (2 * act / (p.tp if p.sequence_parallel else 1) * mbs * (p.virtual_pp or 1)
               / NETWORK_BYTES_PER_S if p.pp > 1 else 0.0),
        "dp": 2 * 4 * ((params - experts) * _ring(dense_d) + experts * _ring(expert_d))
        / _bandwidth(budget.world_size // p.pp, budget),
        "distributed_optimizer": (e * ((params - experts) * _ring(dense_d)
                                       + experts * _ring(expert_d))
                                  / _bandwidth(budget.world_size // p.pp, budget)
                                  if p.distributed_optimizer else 0.0),
    }
    return out


def recompute_time_factor(recipe: RecipeConfig) -> float:
    """Compute with recompute / without: full re-runs each layer's forward (4/3); selective
    re-runs the core attention's forward (QK^T and PV: 4*a*d FLOPs per key seen, per token)."""
    m, p = recipe.model, recipe.parallel
    if p.recompute == "full":
        return FULL_RECOMPUTE_TIME_FACTOR
    if p.recompute == "selective":
        seq = recipe.train.seq_length_tokens
        forward = 4 * m.num_attention_heads * m.head_dim * attention_context_tokens(m, seq)
        return 1 + forward / training_flops_per_token(m, seq)
    return 1.0


def step_time_estimate(recipe: RecipeConfig, plan: dict[str, Any],
                       budget: Budget) -> dict[str, Any]:
    """Seconds per step of `plan` (make_plan of `recipe`): compute, bubble, communication."""
    p = recipe.parallel
    compute = plan["compute"]["step_time_s"] * recompute_time_factor(recipe)
    bubble = (p.pp - 1) / ((p.virtual_pp or 1) * plan["batch"]["num_microbatches"])
    comm = comm_seconds(recipe, plan, budget)
    total = compute * (1 + bubble) + sum(comm.values())
    return {"step_time_s": total, "compute_s": compute, "bubble_fraction": bubble,
            "comm_s": comm}


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


def _evaluate(recipe: RecipeConfig, p: ParallelConfig, budget: Budget) -> dict[str, Any] | None:
    """The plan of `recipe` under layout `p` with its step-time estimate; None if it does not fit."""
    r = dataclasses.replace(recipe, parallel=p)
    plan = make_plan(r, budget.world_size, gpus_per_node=budget.gpus_per_node,
                     gpu_type=budget.gpu_type, mfu=DEFAULT_MFU)
    memory = plan["memory"]["total_per_gpu_gib"]
    if memory >= budget.memory_gib * MEMORY_HEADROOM:
        return None
    return {"parallel": p, "memory_gib": memory, "plan": plan,
            **step_time_estimate(r, plan, budget)}


def _fitting(recipe: RecipeConfig, fixed: dict[str, Any], budget: Budget) -> Iterator[dict]:
    """For each accepted structure, the fastest fitting (optimizer, recompute) per optimizer
    choice: less recompute is faster, so the first recompute that fits wins."""
    optimizers = [fixed["distributed_optimizer"]] if "distributed_optimizer" in fixed \
        else [False, True]
    recomputes = [fixed["recompute"]] if "recompute" in fixed else list(RECOMPUTE_ORDER)
    for p in _structures(recipe, fixed, budget):
        # the leanest variant first: a structure where it does not fit is skipped at once
        leanest = dataclasses.replace(p, distributed_optimizer=optimizers[-1],
                                      recompute=recomputes[-1])
        if _evaluate(recipe, leanest, budget) is None:
            continue
        for dist_opt in optimizers:
            for rc in recomputes:
                found = _evaluate(recipe, dataclasses.replace(
                    p, distributed_optimizer=dist_opt, recompute=rc), budget)
                if found is not None:
                    yield found
                    break


def search_layout(recipe: RecipeConfig, budget: Budget,
                  fixed: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The fastest fitting layout of `recipe` (its train.* is the stage's) within `budget`:
    {"parallel", "memory_gib", "step_time_s", "plan", "candidates"}; None when none fits.
    `fixed`: ParallelConfig fields the search must keep."""
    fixed = fixed or {}
    best, count = None, 0
    for found in _fitting(recipe, fixed, budget):
        count += 1
        key = (found["step_time_s"], found["memory_gib"])
        if best is None or key < (best["step_time_s"], best["memory_gib"]):
            best = found
    if best is not None:
        best["candidates"] = count
    return best


def smallest_fitting_world(recipe: RecipeConfig, budget: Budget,
                           fixed: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The first world of whole nodes (`_NODE_COUNTS` x gpus per node) where a layout fits."""
    for nodes in _NODE_COUNTS:
        world = nodes * budget.gpus_per_node
        found = search_layout(recipe, budget.with_world(world), fixed)
        if found is not None:
            return {"world_size": world, "nodes": nodes, **found}
    return None


def stage_layout(p: ParallelConfig) -> StageParallelConfig:
    """A searched layout as a stage's explicit `parallel:` (auto resolved)."""
    return StageParallelConfig(auto=False, **{k: getattr(p, k) for k in (
        "tp", "pp", "virtual_pp", "ep", "cp", "sequence_parallel", "expert_tp",
        "distributed_optimizer", "recompute")})


def describe(p: ParallelConfig) -> str:
    return (f"TP{p.tp} PP{p.pp} VPP{p.virtual_pp or '-'} CP{p.cp} EP{p.ep} ExpertTP{p.etp} "
            f"recompute={p.recompute} distributed_optimizer={p.distributed_optimizer}")


def describe_choice(choice: dict[str, Any]) -> str:
    """One log line of a `resolve_stage_layouts` choice."""
    p = choice["parallel"]
    return (f"TP{p['tp']} PP{p['pp']} VPP{p['virtual_pp'] or '-'} CP{p['cp']} EP{p['ep']} "
            f"ExpertTP{p['expert_tp']} recompute={p['recompute']} distributed_optimizer="
            f"{p['distributed_optimizer']}: {choice['memory_gib']:.2f} GiB/GPU of "
            f"{choice['gpu_memory_gib']:.0f} ({choice['gpu_type']}), est. "
            f"{choice['step_time_s']:.3g} s/step; fastest of {choice['candidates_fitting']} "
            "fitting layouts")


def _fixed_fields(sp: StageParallelConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(sp).items() if k != "auto" and v is not None}


def resolve_stage_layouts(cfg: RecipeConfig, world_size: int, gpus_per_node: int | None = None,
                          gpu_type: str | None = None,
                          choices: dict[str, dict] | None = None) -> RecipeConfig:
    """`cfg` with every `parallel: {auto: true}` stage replaced by its searched layout for
    `world_size` GPUs (ConfigError before any work when none fits, naming the smallest world
    that would). `choices`, when given, receives per auto stage what was chosen and why."""
    from exaone_train.curriculum.stages import stage_recipe

    if not any(s.parallel.auto for s in cfg.curriculum.stages):
        return cfg
    budget = job_budget(cfg, world_size, gpus_per_node, gpu_type)
    stages = []
    for i, s in enumerate(cfg.curriculum.stages):
        if not s.parallel.auto:
            stages.append(s)
            continue
        fixed = _fixed_fields(s.parallel)
        recipe = stage_recipe(cfg, s)
        found = search_layout(recipe, budget, fixed)
        if found is None:
            raise _no_fit(f"curriculum.stages.{i}.parallel", s.name, recipe, budget, fixed)
        p = found["parallel"]
        if choices is not None:
            choices[s.name] = {"parallel": dataclasses.asdict(stage_layout(p)),
                               "memory_gib": found["memory_gib"],
                               "step_time_s": found["step_time_s"],
                               "candidates_fitting": found["candidates"],
                               "gpu_type": budget.gpu_type, "gpu_memory_gib": budget.memory_gib}
        stages.append(dataclasses.replace(s, parallel=stage_layout(p)))
    cur = dataclasses.replace(cfg.curriculum, stages=stages)
    return dataclasses.replace(cfg, curriculum=cur)


def _no_fit(field: str, name: str, recipe: RecipeConfig, budget: Budget,
            fixed: dict[str, Any]) -> ConfigError:
    smallest = smallest_fitting_world(recipe, budget, fixed)
    where = (f"the smallest world that fits is {smallest['world_size']} GPUs "
             f"({smallest['nodes']} nodes of {budget.gpus_per_node}): "
             f"{describe(smallest['parallel'])}, {smallest['memory_gib']:.1f} GiB/GPU"
             if smallest else f"none fits up to {_NODE_COUNTS[-1]} nodes either")
    return ConfigError(field, "auto", (
        f"stage '{name}' (seq {recipe.train.seq_length_tokens}, global batch "
        f"{recipe.train.global_batch_samples}): no layout of TP/PP/VPP/EP/ExpertTP/CP, recompute "
        f"and distributed optimizer fits {MEMORY_HEADROOM:.0%} of {budget.memory_gib:.0f} GiB "
        f"per GPU on {budget.world_size} GPUs ({budget.gpus_per_node} per node); {where}"))
