"""Checkpoint save / verify / load time and size on this machine (one process).

For each model: build the trainer, take 1 step (so the optimizer state exists), then time
`CheckpointManager.save` (dist_checkpointing write + sha256 manifest + rename + latest),
`latest_valid()` (sha256 verification) and `load` (model + optimizer + train state), best of
`--repeats`. Models: the tiny K-EXAONE and a larger CPU proxy (8 layers, hidden 512).

Run: `python bench/checkpoint_io.py [--repeats 3]` from the repo root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "tiny_kexaone": [],
    "proxy_8x512": ["model.num_layers=8", "model.hidden_size=512", "model.attention_pattern=LLLG"],
}
BASE = ["train.data_source=synthetic", "logging.wandb=false", "train.seq_length_tokens=64",
        "train.global_batch_samples=2", "train.micro_batch_samples=2",
        "checkpoint.interval_steps=0", "checkpoint.keep_last=100",
        "optim.schedule.total_tokens=100000"]


def bench(name: str, overrides: list[str], repeats: int, tmp: Path) -> dict:
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={tmp / name}", *BASE, *overrides])
    state.init_model_parallel(cfg.parallel, cfg.seed)
    t = T.Trainer(cfg, T.prepare_run_dir(cfg))
    t.train_one_step()
    m = t.checkpointing.manager
    params = sum(p.numel() for c in t.model for p in c.parameters())
    saves, verifies, loads = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        path = m.save(t)
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert m.latest_valid() == path
        verifies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.load(t, path)
        loads.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path)
    return {"model": name, "params": params, "bytes": size, "save_s": min(saves),
            "verify_s": min(verifies), "load_s": min(loads)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import logging

    from exaone_train.parallel.testing import run_distributed

    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, overrides in MODELS.items():  # one process each (megatron keeps globals)
            rows.append(run_distributed(bench, 1, name, overrides, args.repeats, Path(d))[0])
    print("| model | params | checkpoint MB | save s | MB/s | verify (sha256) s | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mb = r["bytes"] / 1e6
        print(f"| {r['model']} | {r['params']:,} | {mb:.1f} | {r['save_s']:.2f} | "
              f"{mb / r['save_s']:.0f} | {r['verify_s']:.2f} | {r['load_s']:.2f} |")


if __name__ == "__main__":
    main()
