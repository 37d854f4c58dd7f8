"""`exaone-train demo`: the main job on CPU, end to end. Grows as features land. Today:
1. build the shipped multilingual corpus into megatron-core shards (skipped when up to date),
2. print the tiny K-EXAONE's parameter counts and FLOPs,
3. train it (Muon + WSD, sigmoid MoE with expert bias, MTP) for half the steps, checkpointing,
4. launch the same run again: it resumes from the newest verified checkpoint and finishes,
5. export the final checkpoint to Hugging Face format and score a re-packed corpus sample with
   `transformers`' ExaoneMoeForCausalLM, next to our own evaluation of the checkpoint.
"""

from __future__ import annotations

import argparse
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the tiny K-EXAONE demo on CPU")
    p.add_argument("--recipe", default="tiny_cpu")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def _train(args: argparse.Namespace, run_dir: str, steps: int):
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train.trainer import main

    cfg = load_recipe(args.recipe, [f"run.dir={run_dir}", f"train.train_steps={steps}",
                                    f"checkpoint.interval_steps={max(1, steps // 3)}",
                                    *args.overrides])
    try:
        return cfg, main(cfg)
    finally:
        state.teardown()


def _hf_loss(hf_dir: str, tokens) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        return float(model(input_ids=tokens, labels=tokens).loss)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import torch

    from data_pipeline import build_stage_dataset
    from data_pipeline.build import build
    from exaone_train.config.load import load_recipe
    from exaone_train.export.convert import convert_to_hf
    from exaone_train.export.forward import evaluate_loss
    from exaone_train.model.counts import model_info
    from exaone_train.parallel import state

    run_dir = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_recipe(args.recipe, [f"run.dir={run_dir}", *args.overrides])
    print("== 1/5 data: building the shipped corpus shards")
    build(cfg.data.build)
    print("== 2/5 model")
    print(json.dumps(model_info(cfg.model, seq_len_tokens=cfg.train.seq_length_tokens), indent=2))
    half = args.steps // 2
    print(f"== 3/5 training {cfg.model.name} for {half} of {args.steps} steps ({run_dir})")
    _, first = _train(args, run_dir, half)
    print(f"== 4/5 relaunching the same run for {args.steps} steps: it resumes from step {half}")
    cfg, second = _train(args, run_dir, args.steps)
    losses = [r.loss for r in first + second]
    print(f"   loss {np.mean(losses[:5]):.3f} (first 5 steps) -> {np.mean(losses[-5:]):.3f} "
          f"(last 5); steps run: {len(first)} + {len(second)} after resume")
    print("== 5/5 export to Hugging Face and score a corpus sample with transformers")
    ckpt = f"{run_dir}/checkpoints/iter_{args.steps:07d}"
    hf_dir = convert_to_hf(ckpt, f"{run_dir}/hf")
    ds = build_stage_dataset(cfg.data.stages[cfg.train.data_stage], seed=cfg.data.seed + 1)
    sample = ds[0]
    tokens = torch.from_numpy(sample.tokens[: int(sample.loss_mask.sum()) + 1]).unsqueeze(0)
    np.save(f"{run_dir}/sample.npy", tokens.numpy())
    ours = evaluate_loss(ckpt, f"{run_dir}/sample.npy")["loss"]
    state.teardown()
    theirs = _hf_loss(str(hf_dir), tokens)
    print(f"   sample loss: ours {ours:.5f}, transformers ExaoneMoeForCausalLM {theirs:.5f} "
          f"(|diff| {abs(ours - theirs):.2e})")
    print(f"demo done: run directory {run_dir} (metrics.jsonl, checkpoints/, hf/)")
    return 0
