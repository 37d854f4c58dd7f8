"""`exaone-train train [--recipe R] [overrides]`: runs inside each rank (under torchrun) or as a
single process."""

from __future__ import annotations

import argparse

from launcher.args import add_recipe_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (one stage / a plain run) on this rank")
    add_recipe_arguments(p, "tiny_cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from exaone_train.checkpoint import preemption
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train.trainer import main

    cfg = load_recipe(args.recipe, args.overrides)
    try:
        main(cfg)
    finally:
        state.teardown()
    return preemption.exit_code()  # 3: stopped on SIGTERM/SIGUSR1 after a checkpoint (requeue)
