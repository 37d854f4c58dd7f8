"""`exaone-train launch [--nnodes N] [--nproc-per-node G] [--rdzv-endpoint H:P] [--rdzv-id ID]
[--recipe R] [--command train|curriculum] [--dry-run] [overrides]`: run (or print) this node's
torchrun command; every rank runs `exaone-train <command> --recipe R overrides`."""

from __future__ import annotations

import argparse
import os
import sys

from launcher.args import add_recipe_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run this node's torchrun for `train` or `curriculum` "
                                      "(or print it)")
    p.add_argument("--nnodes", type=int, default=None, help="default: $SLURM_JOB_NUM_NODES or 1")
    p.add_argument("--nproc-per-node", default=None,
                   help="processes per node: int|auto|gpu|cpu (default: $EXAONE_GPUS_PER_NODE, "
                        "$SLURM_GPUS_ON_NODE, else auto)")
    p.add_argument("--rdzv-endpoint", default=None,
                   help="HOST:PORT of the c10d rendezvous (default: $MASTER_ADDR:$MASTER_PORT)")
    p.add_argument("--rdzv-id", default=None, help="default: $SLURM_JOB_ID")
    add_recipe_arguments(p, None, "top-level recipe passed to train (default: train's, tiny_cpu)")
    p.add_argument("--command", choices=["train", "curriculum"], default=None,
                   help="what every rank runs: train (the recipe's train: section) or "
                        "curriculum (all its stages) (default: $EXAONE_RANK_COMMAND, else train)")
    p.add_argument("--train-cmd", default=None,
                   help="command replacing `python -m launcher <command>` (default: "
                        "$EXAONE_TRAIN_CMD); --recipe and overrides are appended")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun in-job restarts")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("--no-check", action="store_true",
                   help="skip the recipe and plan check (world size vs layout) before starting")
    p.set_defaults(func=run_launch)


def run_launch(args: argparse.Namespace) -> int:
    from launcher.launch import ignore_sigusr1

    ignore_sigusr1()  # first: Slurm's warning may come while we still import torch
    from launcher.launch import format_command, run_torchrun, spec_from_env, torchrun_argv

    spec = spec_from_env(nnodes=args.nnodes, nproc_per_node=args.nproc_per_node,
                         rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id,
                         recipe=args.recipe, overrides=args.overrides,
                         train_cmd=args.train_cmd, max_restarts=args.max_restarts,
                         command=args.command)
    argv = torchrun_argv(spec)
    if not spec.train_cmd and not args.no_check:
        nproc = spec.nproc_per_node
        check_plan(spec.recipe or "tiny_cpu", spec.overrides,
                   spec.nnodes * nproc if isinstance(nproc, int) else None, spec.command)
    if args.dry_run:
        print(format_command(argv))
        return 0
    print(f"exaone-train launch [{os.uname().nodename}]: {format_command(argv)}",
          file=sys.stderr, flush=True)
    return run_torchrun(argv)


def check_plan(recipe: str, overrides: list[str], world_size: int | None,
               command: str = "train") -> None:
    """Fail before the rendezvous (and in --dry-run) when the recipe breaks a rule of
    validate(), or its layout (a curriculum: every stage's, `parallel: auto` resolved) cannot
    run on `world_size` (when known: --nproc-per-node N)."""
    from launcher.resource_plan import load_for_plan, make_plan

    cfg = load_for_plan(recipe, overrides)
    if world_size is None:
        return
    if command == "curriculum":
        from exaone_train.curriculum.stages import plan_curriculum
        from launcher.layout_search import resolve_stage_layouts

        plan_curriculum(resolve_stage_layouts(cfg, world_size), world_size)
    else:
        make_plan(cfg, world_size)
