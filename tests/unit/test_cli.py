"""The CLI speaks one way: `--recipe R` on every command that takes a recipe (a positional
RECIPE kept as an alias), help text on every argument, `plan` runs on its own defaults, and the
counting commands (`plan`, `model info`) import no torch / megatron-core."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.args import resolve_recipe
from launcher.cli import build_parser, main

RECIPE_COMMANDS = [["train"], ["plan"], ["model", "info"], ["launch"], ["demo"],
                   ["curriculum"], ["niah"], ["data", "build"], ["data", "inspect"]]


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, [*path, name])
        else:
            yield path, action


def test_every_argument_has_help_text():
    missing = [f"{' '.join(path)} {a.dest}" for path, a in _walk(build_parser(), [])
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.overrides = list(args.overrides) + unknown
    resolve_recipe(args, parser)
    return args


@pytest.mark.parametrize("command", RECIPE_COMMANDS, ids=" ".join)
def test_every_recipe_command_takes_recipe_option_and_positional_alias(command):
    by_option = _parse([*command, "--recipe", "r.yaml", "seed=3"])
    by_position = _parse([*command, "r.yaml", "seed=3"])
    for args in (by_option, by_position):
        assert (args.recipe, args.overrides) == ("r.yaml", ["seed=3"])
    default = _parse([*command, "seed=3"])  # an override in the recipe's place
    assert default.overrides == ["seed=3"] and default.recipe == default.recipe_default


def test_niah_needs_no_recipe_argument():
    assert _parse(["niah"]).recipe == "tiny_cpu"


def test_two_different_recipes_are_refused():
    with pytest.raises(SystemExit):
        _parse(["curriculum", "a", "--recipe", "b"])


def test_plan_without_arguments_runs_on_its_defaults(capsys):
    assert main(["plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"] == "tiny_kexaone" and plan["world"]["world_size"] == 1


def test_plan_without_nodes_takes_the_fewest_whole_nodes(capsys):
    assert main(["plan", "--recipe", "kexaone_236b", "--json"]) == 0
    world = json.loads(capsys.readouterr().out)["world"]
    assert (world["world_size"], world["nodes"], world["gpus_per_node"]) == (64, 8, 8)


HEAVY = ("torch", "megatron", "transformers", "datasets")


@pytest.mark.parametrize("argv", [["plan", "--recipe", "kexaone_236b"],
                                  ["model", "info", "--recipe", "kexaone_236b"]], ids=" ".join)
def test_counting_commands_import_no_torch_or_megatron(argv):
    code = ("import sys, contextlib, io\nfrom launcher.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main({argv!r})\n"
            f"print(rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split("\n")[-2] == "0 []", out.stdout + out.stderr
