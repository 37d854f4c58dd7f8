"""`exaone-train eval loss CKPT_DIR --tokens FILE.npy [--json]`: mean next-token loss of a
token array (1-D: one sequence; 2-D: [batch, seq]) under a model checkpoint, over the
tokenizer vocab (padded rows excluded), on one process."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model checkpoint")
    esub = p.add_subparsers(dest="eval_command", required=True)
    loss = esub.add_parser("loss", help="mean next-token loss of a token array")
    loss.add_argument("ckpt_dir", help="model or training checkpoint (config.yaml + model/)")
    loss.add_argument("--tokens", required=True, help=".npy of token ids, [seq] or [batch, seq]")
    loss.add_argument("--json", action="store_true", help="print JSON")
    loss.set_defaults(func=run_loss)


def run_loss(args: argparse.Namespace) -> int:
    from exaone_train.export.forward import evaluate_loss
    from exaone_train.parallel import state

    try:
        result = evaluate_loss(args.ckpt_dir, args.tokens)
    finally:
        state.teardown()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {result['loss']:.6f} (perplexity {result['perplexity']:.3f}) over "
              f"{result['tokens']} predicted tokens")
    return 0
