"""`exaone-train demo`: the main job on CPU, end to end. Grows as features land. Today:
1. build the shipped multilingual corpus into megatron-core shards (skipped when up to date),
2. print the tiny K-EXAONE's parameter counts and FLOPs,
3. train it (Muon + WSD, MoE with expert bias, MTP) on the shipped corpus and report the loss.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the tiny K-EXAONE demo on CPU")
    p.add_argument("--recipe", default="tiny_cpu")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from data_pipeline.build import build
    from exaone_train.config.load import load_recipe
    from exaone_train.model.counts import model_info
    from exaone_train.parallel import state
    from exaone_train.train.trainer import main

    cfg = load_recipe(args.recipe, ["run.dir=runs/demo", "train.train_steps=60", *args.overrides])
    print("== 1/3 data: building the shipped corpus shards")
    build(cfg.data.build)
    print("== 2/3 model")
    print(json.dumps(model_info(cfg.model, seq_len_tokens=cfg.train.seq_length_tokens), indent=2))
    print(f"== 3/3 training {cfg.model.name} for {cfg.train.train_steps} steps "
          f"on stage '{cfg.train.data_stage}' (run dir {cfg.run.dir})")
    try:
        results = main(cfg)
    finally:
        state.teardown()
    first = sum(r.loss for r in results[:5]) / 5
    last = sum(r.loss for r in results[-5:]) / 5
    print(f"demo done: loss {first:.3f} (first 5 steps) -> {last:.3f} (last 5 steps); "
          f"metrics in {cfg.run.dir}/metrics.jsonl")
    return 0
