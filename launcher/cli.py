"""`exaone-train <command> ...` (also `python -m launcher`).

Each command group lives in its own module `launcher/cmd_<group>.py` exposing
`add_parser(subparsers)`; a group registers its subcommands and sets `func(args) -> int`.
Recipe overrides are plain Hydra override strings after the known options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from exaone_train import console
from exaone_train.errors import ExaoneTrainError
from launcher.args import resolve_recipe

COMMAND_MODULES = [
    "launcher.cmd_model",
    "launcher.cmd_demo",
    "launcher.cmd_train",
    "launcher.cmd_curriculum",
    "launcher.cmd_data",
    "launcher.cmd_convert",
    "launcher.cmd_eval",
    "launcher.cmd_niah",
    "launcher.cmd_plan",
    "launcher.cmd_launch",
    "launcher.cmd_report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exaone-train",
        description="Pretrain K-EXAONE / EXAONE 4.0 on megatron-core from Hydra recipes.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    overrides = list(getattr(args, "overrides", []) or []) + unknown
    console.setup(verbose=console.verbose_requested(overrides))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"unrecognised arguments (not Hydra overrides key=value): {' '.join(bad)}")
    args.overrides = overrides
    resolve_recipe(args, parser)
    try:
        return int(args.func(args) or 0)
    except ExaoneTrainError as e:
        print(f"exaone-train: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
