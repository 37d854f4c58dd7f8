"""`exaone-train model info [--recipe R] [overrides] [--json]`."""

from __future__ import annotations

import argparse
import json

from launcher.args import add_recipe_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model information")
    msub = p.add_subparsers(dest="model_command", required=True)
    info = msub.add_parser("info", help="parameter counts and training FLOPs per token")
    add_recipe_arguments(info, "tiny_cpu")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--seq-len", type=int, default=None,
                      help="sequence length for the attention FLOPs term (default: 8192)")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from exaone_train.config.load import load_recipe
    from exaone_train.model.counts import model_info

    # counting: a login node's validation (no Transformer Engine needed, no data read)
    cfg = load_recipe(args.recipe, args.overrides, runnable_here=False, reads_train_data=False)
    info = model_info(cfg.model, seq_len_tokens=args.seq_len or 8192)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>32}: {v:,}" if isinstance(v, int) else f"{k:>32}: {v}")
    return 0
