"""`exaone-train niah <recipe> [--name N] [--out DIR] [overrides]`: Needle-In-A-Haystack on a
model's weights, under the recipe's layout (one process, or every rank under torchrun).

Weights: `train.init_from=<dir>/model` if set, else the newest checkpoint of `run.dir` that
verifies (or `checkpoint.load_from`). The grid comes from `eval.niah.*` (NiahConfig), e.g.
`eval.niah.lengths=[256,1024] train.seq_length_tokens=1024`. Writes `<out>/niah/<name>.json`
and `.png` (out defaults to run.dir). Exit code 0 when the green light is on, 1 when not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from launcher.args import add_recipe_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("niah", help="Needle-In-A-Haystack grid on a model; exit 1 if it fails")
    add_recipe_arguments(p, "tiny_cpu")
    p.add_argument("--name", default="niah", help="report name: <out>/niah/<name>.json")
    p.add_argument("--out", default=None, help="output directory (default: run.dir)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def load_weights(cfg, chunks) -> str:
    """Load `train.init_from` or the run's newest valid checkpoint into `chunks`; its path."""
    from exaone_train.checkpoint.manager import CheckpointManager
    from exaone_train.checkpoint.model_checkpoint import MODEL_DIR
    from exaone_train.checkpoint.model_state import load_model_state
    from exaone_train.errors import CheckpointError

    if cfg.train.init_from:
        load_model_state(chunks, cfg.train.init_from)
        return str(cfg.train.init_from)
    manager = CheckpointManager(cfg, cfg.run.dir)
    path = manager.resume_path()
    if path is None:
        raise CheckpointError(f"no weights to evaluate: set train.init_from=<dir>/model, or "
                              f"run.dir to a run with a checkpoint ({manager.dir} has none "
                              f"that verifies)")
    load_model_state(chunks, path / MODEL_DIR)
    return str(path)


def run(args: argparse.Namespace) -> int:
    from exaone_train.config.load import load_recipe
    from exaone_train.eval.niah import run_niah, validate_niah
    from exaone_train.parallel import ranks, state
    from exaone_train.train.trainer import build_model_chunks

    cfg = load_recipe(args.recipe, args.overrides, reads_train_data=False)  # haystacks: eval.niah
    validate_niah(cfg.eval.niah, cfg, "eval.niah")  # before building anything
    try:
        state.setup(cfg.parallel, cfg.seed)
        chunks = build_model_chunks(cfg)
        source = load_weights(cfg, chunks)
        out = Path(args.out or cfg.run.dir)
        report = run_niah(SimpleNamespace(model=chunks, cfg=cfg), cfg.eval.niah, out, args.name,
                          "eval.niah")
        if ranks.is_rank0():
            print(json.dumps(report.to_dict(), indent=1) if args.json
                  else format_grid(report, source, out / "niah" / f"{args.name}.json"))
    finally:
        state.teardown()
    return 0 if report.passed else 1


def format_grid(report, source: str, path: Path) -> str:
    """The accuracy grid as a table: one row per length, one column per depth."""
    from exaone_train.eval.niah import grid_lines

    cfg = report.config
    verdict = "PASS" if report.passed else "FAIL"
    summary = (f"NIAH {report.name} on {source}: mean {report.mean_accuracy:.3f} "
               f"(>= {cfg['pass_accuracy']}), min cell {report.min_cell_accuracy:.3f} "
               f"(>= {cfg['min_cell_accuracy']}): {verdict}; answer tokens right "
               f"(teacher-forced) {report.token_accuracy:.3f}")
    return "\n".join([*grid_lines(report), summary, f"report: {path}"])
