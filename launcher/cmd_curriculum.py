"""`exaone-train curriculum --recipe R [overrides]` (`curriculum R [overrides]` too): walk the
recipe's curriculum (its `curriculum:` section, e.g. `curriculum=tiny`) stage by stage on this
rank: as one process, or on every rank under torchrun like `exaone-train train`. Relaunching
the same command on the same `run.dir` continues where it stopped. Exit status: 0 done, 2 recipe
error, 3 stopped on SIGTERM/SIGUSR1 after a checkpoint (requeue), 4 a gate stopped it, 5 the
stability guard did.

`exaone-train curriculum status RUN_DIR`: stages done, tokens, retries, gate results, current
stage and step, each stage's layout (from the run directory's files; nothing is built).
`... status --why-stopped [RUN_DIR | --recipe R overrides]`: the one line slurm/train.sh logs
when a run stopped for good (the run directory from the recipe's `run.dir` when not given)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RECIPE = "tiny_cpu"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curriculum", help="train a recipe's whole curriculum, stage by stage; "
                                          "`curriculum status RUN_DIR`: where a run stands")
    p.add_argument("recipe_positional", nargs="?", default=None, metavar="RECIPE",
                   help=f"top-level recipe (same as --recipe; default {DEFAULT_RECIPE}), or "
                        "`status`")
    p.add_argument("run_dir", nargs="?", default=None, help="with `status`: the run directory")
    p.add_argument("--recipe", default=None, help="top-level recipe")
    p.add_argument("--why-stopped", action="store_true",
                   help="with `status`: one line on why the run stopped")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. run.dir=runs/x")
    p.set_defaults(resolve_recipe=_resolve, status=False, recipe_default=DEFAULT_RECIPE)
    p.set_defaults(func=run)


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`args.recipe` and `args.overrides` from the positional and option forms (`status`
    keeps its RUN_DIR positional); two different recipes are an error."""
    if args.recipe_positional == "status":
        args.status, args.recipe = True, args.recipe or DEFAULT_RECIPE
        return
    positional = [x for x in (args.recipe_positional, args.run_dir) if x is not None]
    args.overrides = [x for x in positional if "=" in x] + list(args.overrides)
    names = [x for x in positional if "=" not in x]
    if len(names) > 1 or (names and args.recipe is not None and names[0] != args.recipe):
        parser.error(f"two recipes given: {' and '.join(names + [args.recipe or ''])}")
    args.recipe = args.recipe or (names[0] if names else DEFAULT_RECIPE)


def run(args: argparse.Namespace) -> int:
    if args.status:
        return run_status(args)
    from exaone_train.config.load import load_recipe
    from exaone_train.curriculum.driver import run_curriculum
    from exaone_train.curriculum.stages import plan_curriculum
    from exaone_train.parallel import state

    cfg = load_recipe(args.recipe, args.overrides)
    plan_curriculum(cfg)  # the layout-free rules, before any process group exists
    try:
        return run_curriculum(cfg)
    finally:
        state.teardown()


def run_status(args: argparse.Namespace) -> int:
    from exaone_train.curriculum.status import status_text, why_stopped

    run_dir = args.run_dir if args.run_dir and "=" not in args.run_dir else None
    if run_dir is None:  # the run directory the recipe (and its overrides) names
        from exaone_train.config.load import compose_recipe

        overrides = [x for x in [args.run_dir] if x] + list(args.overrides)
        run_dir = compose_recipe(args.recipe, overrides).run.dir
    print(why_stopped(Path(run_dir)) if args.why_stopped else status_text(Path(run_dir)))
    return 0
