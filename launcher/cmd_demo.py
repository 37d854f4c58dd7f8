"""`exaone-train demo`: the main job on CPU, end to end. Grows as features land. Today:
1. build the shipped multilingual corpus into megatron-core shards (skipped when up to date),
2. print the tiny K-EXAONE's parameter counts and FLOPs,
3. print the plan of its curriculum (recipes/curriculum/tiny.yaml): foundation, domain and
   reasoning at 256 tokens, context extension to 1024 and 4096, one WSD schedule,
4. run `exaone-train curriculum` on it (Muon + WSD, sigmoid MoE with expert bias, MTP) and
   preempt it with SIGUSR1 once the domain stage's gate is recorded: it saves and exits 3,
5. launch the same command again: it resumes from the newest verified checkpoint and walks the
   remaining stages, gating each on the short-context validation loss and running NIAH after
   the context-extension stages (reported, not required, for a model this small; see
   recipes/curriculum/tiny.yaml) (curriculum.json, niah/<stage>.json + .png),
6. export the final checkpoint to Hugging Face format and score a whole long document with
   `transformers`' ExaoneMoeForCausalLM, next to our own evaluation of the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.args import add_recipe_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the tiny K-EXAONE demo on CPU")
    add_recipe_arguments(p, "tiny_cpu")
    p.add_argument("--preempt-after", default="domain",
                   help="stage whose recorded gate triggers the SIGUSR1 (default domain)")
    p.set_defaults(func=run)


def _curriculum(args: argparse.Namespace, run_dir: str, preempt_after: str | None) -> int:
    """`exaone-train curriculum` as a child process; SIGUSR1 once `preempt_after`'s gate is in
    curriculum.json (as Slurm's --signal would before a preemption)."""
    cmd = [sys.executable, "-m", "launcher", "curriculum", "--recipe", args.recipe,
           f"run.dir={run_dir}",
           *args.overrides]
    proc = subprocess.Popen(cmd)
    record = Path(run_dir) / "curriculum.json"
    while preempt_after is not None and proc.poll() is None:
        if _gated(record, preempt_after):
            print(f"== demo: stage {preempt_after} gated; sending SIGUSR1 (preemption)")
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.2)
    return proc.wait()


def _gated(record: Path, stage: str) -> bool:
    try:
        stages = json.loads(record.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return False
    return any(s["stage"] == stage and s["attempts"] for s in stages)


def _niah_cell(stage: dict) -> str:
    """NIAH exact match of every attempt of a stage, e.g. "0.40 -> 0.95" (or "-")."""
    accs = [a["gate"]["niah"]["mean_accuracy"] for a in stage["attempts"]
            if a.get("gate", {}).get("niah")]
    return " -> ".join(f"{x:.2f}" for x in accs) or "-"


def _gate_cell(stage: dict) -> str:
    last = stage["attempts"][-1] if stage["attempts"] else {}
    gate = last.get("gate", {})
    if gate.get("passed"):
        retries = stage["retries"]
        return "passed" + (f" after {retries} retr{'y' if retries == 1 else 'ies'}"
                           if retries else "")
    return "; ".join(gate.get("reasons", [])) or "-"


def _summary(run_dir: str) -> None:
    """The table of the run: per stage steps, tokens, retries, short-context loss, NIAH, gate."""
    rec = json.loads((Path(run_dir) / "curriculum.json").read_text())
    print(f"== summary: curriculum {rec['status']}; initial short-context loss "
          f"{rec['initial_short_loss']:.3f}")
    print(f"   {'stage':<12}{'steps':>6}{'tokens':>9}{'retries':>8}{'short loss':>11}  "
          f"{'NIAH exact match':<18}gate")
    for s in rec["stages"]:
        last = s["attempts"][-1] if s["attempts"] else {}
        loss = last.get("short_loss")
        print(f"   {s['stage']:<12}{s['steps']:>6}{s['tokens']:>9}{s['retries']:>8}"
              f"{'' if loss is None else f'{loss:.3f}':>11}  {_niah_cell(s):<18}{_gate_cell(s)}")
    reports = sorted(p.name for p in (Path(run_dir) / "niah").glob("*.json"))
    if reports:
        print(f"   NIAH reports and heatmaps: {run_dir}/niah/ ({', '.join(reports)} + .png)")
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows}  # a step logged twice: the resumed run's
    first, last = [losses[k] for k in sorted(losses)[:5]], [losses[k] for k in sorted(losses)[-5:]]
    print(f"   training loss {sum(first) / 5:.3f} (first 5 steps) -> {sum(last) / 5:.3f} "
          f"(last 5)")


def _run_report(run_dir: str) -> Path:
    """`exaone-train report RUN_DIR`: plots and a Markdown summary of the run."""
    from launcher.report import write_report

    return write_report(Path(run_dir))


def _long_document(cfg) -> tuple:
    """The first ctx_4k sample holding a long document: its tokens [1, n] (up to its padding)."""
    import torch

    from data_pipeline import build_stage_dataset

    ds = build_stage_dataset(cfg.data.stages["ctx_4k"], seed=cfg.data.seed)
    sample = next(ds[i] for i in range(len(ds)) if ds[i].source == "long_docs")
    n = int(sample.loss_mask.sum()) + 1
    return torch.from_numpy(sample.tokens[:n]).unsqueeze(0)


def _hf_loss(hf_dir: str, tokens) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        return float(model(input_ids=tokens, labels=tokens).loss)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from data_pipeline.build import build
    from exaone_train import console
    from exaone_train.config.load import load_recipe
    from exaone_train.curriculum.stages import format_curriculum, plan_curriculum
    from exaone_train.export.convert import convert_to_hf
    from exaone_train.export.forward import evaluate_loss
    from exaone_train.model.counts import model_info
    from exaone_train.parallel import state

    t0 = time.monotonic()
    run_dir = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_recipe(args.recipe, [f"run.dir={run_dir}", *args.overrides])
    console.attach_run_log(run_dir, "demo")
    print("== 1/6 data: building the shipped corpus shards")
    build(dataclasses.replace(cfg.data.build, progress=False))
    print("== 2/6 model")
    info = model_info(cfg.model, seq_len_tokens=cfg.train.seq_length_tokens)
    print(f"   {info['name']} ({info['family']}): {cfg.model.num_layers} layers "
          f"{cfg.model.attention_pattern} (window {cfg.model.sliding_window_tokens}), hidden "
          f"{cfg.model.hidden_size}, {cfg.model.num_experts} experts + shared, MTP "
          f"{cfg.model.mtp_num_layers}; {info['total_params_with_mtp']:,} parameters "
          f"({info['active_params_per_token']:,} active per token)")
    print("== 3/6 the curriculum (its stage table is printed as it starts)")
    print("   " + format_curriculum(plan_curriculum(cfg)).splitlines()[0])
    print(f"== 4/6 exaone-train curriculum --recipe {args.recipe} run.dir={run_dir} (preempted after "
          f"stage {args.preempt_after})")
    code = _curriculum(args, run_dir, args.preempt_after)
    print(f"   exit status {code} (3: saved a checkpoint and stopped, as for a requeue)")
    print("== 5/6 the same command again: it resumes and walks the remaining stages")
    code = _curriculum(args, run_dir, None)
    if code != 0:
        print(f"demo: the curriculum exited with status {code}; see {run_dir}/curriculum.json")
        return code
    print("== 6/6 export to Hugging Face and score a whole long document with transformers")
    ckpts = Path(run_dir) / "checkpoints"
    ckpt = str(ckpts / (ckpts / "latest").read_text().strip())
    hf_dir = convert_to_hf(ckpt, f"{run_dir}/hf")
    tokens = _long_document(cfg)
    np.save(f"{run_dir}/sample.npy", tokens.numpy())
    ours = evaluate_loss(ckpt, f"{run_dir}/sample.npy")["loss"]
    state.teardown()
    theirs = _hf_loss(str(hf_dir), tokens)
    print(f"   {tokens.shape[1]}-token document loss: ours {ours:.5f}, transformers "
          f"ExaoneMoeForCausalLM {theirs:.5f} (|diff| {abs(ours - theirs):.2e})")
    _summary(run_dir)
    print(f"demo done in {time.monotonic() - t0:.0f} s: run directory {run_dir} "
          "(curriculum.json, metrics.jsonl, niah/, logs/, checkpoints/, hf/)")
    print(f"   run report (plots, summary): {_run_report(run_dir)}")
    return 0
