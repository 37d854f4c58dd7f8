"""Arguments every command spells the same way: `--recipe R` (a positional RECIPE is kept as an
alias, as `curriculum`, `data` and `niah` took it) and the Hydra overrides after it."""

from __future__ import annotations

import argparse

OVERRIDES_HELP = "Hydra overrides key=value, e.g. parallel.tp=2 run.dir=runs/x"


def add_recipe_arguments(p: argparse.ArgumentParser, default: str | None,
                         what: str = "top-level recipe in recipes/ or a .yaml path") -> None:
    """`--recipe` (default `default`), the positional alias and `overrides` on `p`;
    `resolve_recipe` (called by cli.main) merges them into `args.recipe`."""
    shown = f" (default {default})" if default else ""
    p.add_argument("--recipe", default=None, help=f"{what}{shown}")
    p.add_argument("recipe_positional", nargs="?", default=None, metavar="RECIPE",
                   help="the same as --recipe (kept as an alias)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(recipe_default=default)


def resolve_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`args.recipe` from --recipe or the positional alias (a positional holding '=' is the
    first override: `exaone-train curriculum run.dir=x`), else the command's default."""
    custom = getattr(args, "resolve_recipe", None)  # a command with its own positionals
    if custom is not None:
        return custom(args, parser)
    if not hasattr(args, "recipe_positional"):
        return
    pos = args.recipe_positional
    if pos is not None and "=" in pos:
        args.overrides.insert(0, pos)
        pos = None
    if pos is not None and args.recipe is not None and pos != args.recipe:
        parser.error(f"two recipes given: --recipe {args.recipe} and {pos}")
    args.recipe = args.recipe or pos or args.recipe_default
