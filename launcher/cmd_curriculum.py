"""`exaone-train curriculum [RECIPE] [overrides]`: walk the recipe's curriculum (its
`curriculum:` section, e.g. `curriculum=tiny`) stage by stage on this rank: as one process, or
on every rank under torchrun like `exaone-train train`. Relaunching the same command on the same
`run.dir` continues where it stopped. Exit status: 0 done, 2 recipe error, 3 stopped on
SIGTERM/SIGUSR1 after a checkpoint (requeue), 4 a gate stopped it, 5 the stability guard did."""

from __future__ import annotations

import argparse

from launcher.args import add_recipe_arguments

DEFAULT_RECIPE = "tiny_cpu"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curriculum", help="train a recipe's whole curriculum, stage by stage")
    add_recipe_arguments(p, DEFAULT_RECIPE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from exaone_train.config.load import load_recipe
    from exaone_train.curriculum.driver import run_curriculum
    from exaone_train.curriculum.plan import plan_curriculum
    from exaone_train.parallel import state

    cfg = load_recipe(args.recipe, args.overrides)
    plan_curriculum(cfg)  # the layout-free rules, before any process group exists
    try:
        return run_curriculum(cfg)
    finally:
        state.teardown()
