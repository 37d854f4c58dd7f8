"""`exaone-train report RUN_DIR [--out DIR]`: PNG plots of a run (loss and MTP loss, LR,
tokens/s, grad norm, expert load, per-stage validation loss, NIAH heatmaps) and a Markdown
summary linking them (launcher/report.py), written to RUN_DIR/report/ by default."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plots and a Markdown summary of a run directory")
    p.add_argument("run_dir", help="the run directory (run.dir)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launcher.report import write_report

    print(write_report(Path(args.run_dir), Path(args.out) if args.out else None))
    return 0
