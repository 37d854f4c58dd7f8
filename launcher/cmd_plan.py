"""`exaone-train plan [--recipe R] [--nodes N] [--gpus-per-node G] [--gpu-type T] [--json]
[overrides]`: the dry-run plan (layout, memory, time) of a recipe on N x G GPUs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from exaone_train.train.hardware import GPU_SPECS
from launcher.args import add_recipe_arguments

DEFAULT_GPUS_PER_NODE = 8


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="dry-run plan: layout, memory per GPU, step time")
    add_recipe_arguments(p, "tiny_cpu")
    p.add_argument("--nodes", type=int, default=None,
                   help="number of nodes (default: the fewest the recipe's layout and batch "
                        "run on)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help=f"GPUs per node (default {DEFAULT_GPUS_PER_NODE}, or fewer on one node "
                        "when the recipe needs fewer)")
    p.add_argument("--gpu-type", default="h100", choices=sorted(GPU_SPECS),
                   help="GPU model: memory and peak FLOP/s (default h100)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per sample (default: the recipe's train.seq_length_tokens)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="samples per micro-batch (default: train.micro_batch_samples)")
    p.add_argument("--global-batch", type=int, default=None,
                   help="samples per step (default: train.global_batch_samples)")
    p.add_argument("--mfu", type=float, default=None,
                   help="assumed model FLOPs utilisation for the step time (default 0.4)")
    p.add_argument("--optimizer", choices=["muon", "adamw"], default=None,
                   help="optimizer whose state the memory counts (default: optim.algorithm)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (plan.json)")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from launcher.resource_plan import DEFAULT_MFU, load_for_plan, make_plan

    cfg = load_for_plan(args.recipe, args.overrides)
    world, gpus_per_node = world_of(cfg, args.nodes, args.gpus_per_node)
    common = {"gpus_per_node": gpus_per_node, "gpu_type": args.gpu_type,
              "mfu": args.mfu or DEFAULT_MFU, "optimizer": args.optimizer}
    plan = make_plan(cfg, world, seq_len_tokens=args.seq_len,
                     micro_batch_samples=args.micro_batch,
                     global_batch_samples=args.global_batch, **common)
    curriculum = curriculum_plan_with_search(cfg, world, **common)
    if curriculum is not None:
        plan["curriculum"] = curriculum
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def curriculum_plan_with_search(cfg: Any, world: int, **common: Any) -> dict[str, Any] | None:
    """`curriculum_plan` after the layout search resolved the `parallel: {auto: true}` stages
    for this world (a stage that fits nowhere here carries the search's error)."""
    from exaone_train.errors import ConfigError
    from launcher.layout_search import resolve_stage_layouts
    from launcher.resource_plan import curriculum_plan

    if not cfg.curriculum.stages:
        return None
    choices: dict[str, dict] = {}
    try:
        resolved = resolve_stage_layouts(cfg, world, common["gpus_per_node"], common["gpu_type"],
                                         choices)
    except ConfigError as e:
        out = curriculum_plan(cfg, world, **common)
        assert out is not None
        out["layout_search_error"] = str(e)
        return out
    out = curriculum_plan(resolved, world, **common)
    assert out is not None
    for row in out["stages"]:
        if row["name"] in choices:
            row["layout_search"] = choices[row["name"]]
    return out


def world_of(cfg: Any, nodes: int | None, gpus_per_node: int | None) -> tuple[int, int]:
    """(world size, GPUs per node): as given, else the smallest world the recipe runs on: whole
    nodes of `gpus_per_node` when given, else part of one 8-GPU node or whole 8-GPU nodes."""
    from launcher.resource_plan import smallest_world

    gpn = gpus_per_node or DEFAULT_GPUS_PER_NODE
    if nodes is not None:
        return nodes * gpn, gpn
    world = smallest_world(cfg, gpn, part_node=gpus_per_node is None)
    return world, min(world, gpn)


def format_plan(plan: dict[str, Any]) -> str:
    """A page a person reads before submitting."""
    w, par, mem, act, c = (plan["world"], plan["parallel"], plan["memory"],
                           plan["memory"]["activations"], plan["compute"])
    b, pipe = plan["batch"], plan["pipeline"]
    static = mem["static_per_gpu_gib"]
    lines = [
        f"plan: {plan['model']} on {w['nodes']} x {w['gpus_per_node']} {w['gpu_name']} "
        f"(world {w['world_size']})",
        f"  layout      TP {par['tp']}  PP {par['pp']}  VPP {par['virtual_pp'] or '-'}  "
        f"CP {par['cp']}  DP {par['dp']}  |  EP {par['ep']}  ExpertTP {par['expert_tp']}  "
        f"ExpertDP {par['expert_dp'] or '-'}  ({par['experts_per_ep_rank'] or '-'} experts/rank)",
        f"  pipeline    {pipe['layers_per_stage']} layers per stage, "
        f"{pipe['layers_per_virtual_stage']} per virtual stage",
        f"  batch       seq {b['seq_len_tokens']}, micro {b['micro_batch_samples']}, global "
        f"{b['global_batch_samples']} samples ({b['tokens_per_step']:,} tokens, "
        f"{b['num_microbatches']} micro-batches per DP rank)",
        f"  params/GPU  {max(s['params'] for s in pipe['stages']):,} on the largest stage",
        f"  static/GPU  (stage {mem['worst_stage']}, the fullest) "
        f"{static['replicated']:.1f} GiB replicated optimizer, "
        f"{static['distributed']:.1f} GiB distributed optimizer "
        f"({mem['precision']} params, fp32 grads+master, {mem['optimizer']} state)",
        f"  activations {act['per_layer_per_microbatch_gib']:.3f} GiB per layer per micro-batch; "
        f"peak {act['peak_gib']:.1f} GiB (recompute={par['recompute']}, "
        f"{act['in_flight_microbatches_first_stage']:.1f} micro-batches in flight on stage 0)",
        f"  total/GPU   {mem['total_per_gpu_gib']:.1f} GiB of {w['gpu_memory_gib']} "
        f"({'fits' if mem['fits'] else 'DOES NOT FIT'})",
        f"  compute     {c['training_flops_per_token']:.3e} FLOPs/token; at MFU "
        f"{c['assumed_mfu']:.0%} of {c['peak_flops_per_gpu'] / 1e12:.0f} TFLOP/s: "
        f"{c['step_time_s']:.2f} s/step, {c['tokens_per_s']:,.0f} tokens/s",
    ]
    lines += [f"  warning     {x}" for x in plan["warnings"]]
    if "curriculum" in plan:
        lines += format_curriculum_plan(plan["curriculum"])
    return "\n".join(lines)


def format_curriculum_plan(cur: dict[str, Any]) -> list[str]:
    """One line per curriculum stage: length, tokens, layout, memory, time."""
    s = cur["schedule"]
    lines = [f"curriculum {cur['name']}: {cur['total_tokens']:,} tokens; one WSD: warmup "
             f"{s['warmup_tokens']:,}, decay [{s['decay_start_tokens']:,}, {s['total_tokens']:,})"]
    for st in cur["stages"]:
        p = st["parallel"]
        head = (f"  {st['name']:<12} seq {st['seq_length_tokens']:>7}  {st['tokens']:>18,} tok "
                f"{st['steps']:>9,} steps  TP{p['tp']} PP{p['pp']} VPP{p['virtual_pp'] or '-'} "
                f"EP{p['ep']} CP{p['cp']}")
        if "error" in st:
            lines.append(f"{head}  cannot run here: {st['error']}")
        else:
            lines.append(f"{head} DP{st['dp']}  {st['total_per_gpu_gib']:6.1f} GiB/GPU "
                         f"{'' if st['fits'] else '(DOES NOT FIT) '}{st['step_time_s']:6.2f} s/step"
                         f"  {st['days']:6.1f} days")
        if "layout_search" in st:
            c = st["layout_search"]
            lines.append(f"  {'':<12} (parallel: auto) {c['parallel']['recompute']} recompute, "
                         f"distributed optimizer {c['parallel']['distributed_optimizer']}, "
                         f"ExpertTP {c['parallel']['expert_tp']}; estimated with communication "
                         f"and bubble {c['step_time_s']:.2f} s/step; fastest of "
                         f"{c['candidates_fitting']} fitting layouts")
    if "layout_search_error" in cur:
        lines.append(f"  layout search: {cur['layout_search_error']}")
    return lines
