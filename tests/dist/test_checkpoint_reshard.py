"""A checkpoint saved under TP2, EP2, PP2, PP2 x VPP2 or DP2 (2 gloo processes) resumes on 1
process: the model, the Muon/AdamW state, the step, the consumed samples (so the data order)
and the LR carry over. The resumed losses match the 2-process run's own continuation.

Tolerances (fp32; see tests/dist/test_trainer_layouts.py): layouts change the reduction order,
so nothing is guaranteed bitwise. The first resumed step's loss comes from the loaded weights
before any update in the new layout: 1e-5 relative (measured: identical for all five). The
next step: 1e-4 relative (Adam/Muon amplify reduction-order differences; measured 4.7e-7 TP2,
2.9e-8 EP2 and PP2 x VPP2, 0 PP2 and DP2). A lost optimizer state (moments left at zero after
the load) moves the second resumed loss by 5.0e-3 relative (measured, DP2 -> 1), so it
fails."""

from __future__ import annotations

import pytest

from exaone_train.parallel.testing import run_distributed

SAVE_AT, STEPS = 3, 5
BASE = ["train.data_source=synthetic", "logging.wandb=false", f"train.train_steps={STEPS}",
        "train.seq_length_tokens=64", "train.global_batch_samples=4",
        "train.micro_batch_samples=1", "optim.clip_grad=0.0",
        f"checkpoint.interval_steps={SAVE_AT}", "checkpoint.save_final=false"]


def _train(run_dir: str, overrides: list[str]) -> list[tuple[int, float, float]]:
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={run_dir}", *BASE, *overrides])
    state.setup(cfg.parallel, cfg.seed)
    t = T.Trainer(cfg, T.prepare_run_dir(cfg))
    first = t.step + 1
    return [(first + i, r.loss, t._lr_at(0, t.optim_cfg)) for i, r in enumerate(t.fit())]


@pytest.mark.parametrize("layout", [
    ["parallel.tp=2", "parallel.sequence_parallel=true"],
    ["parallel.ep=2"],
    ["parallel.pp=2"],
    ["parallel.pp=2", "parallel.virtual_pp=2"],  # chunks saved as model0/model1, global layers
    [],  # DP2
], ids=["tp2", "ep2", "pp2", "pp2_vpp2", "dp2"])
def test_resume_on_one_process_from_two_process_layout(tmp_path, layout):
    two = run_distributed(_train, 2, str(tmp_path / "two"), layout)[-1]
    ckpt = tmp_path / "two" / "checkpoints" / f"iter_{SAVE_AT:07d}"
    assert (ckpt / "manifest.json").is_file()
    one = run_distributed(_train, 1, str(tmp_path / "one"), [f"checkpoint.load_from={ckpt}"])[0]
    assert [s for s, _, _ in one] == list(range(SAVE_AT + 1, STEPS + 1))
    ref = {s: loss for s, loss, _ in two}
    step, loss, _ = one[0]
    assert abs(loss - ref[step]) <= 1e-5 * ref[step], f"first resumed step {step}: {loss} vs {ref[step]}"
    for step, loss, _ in one[1:]:
        assert abs(loss - ref[step]) <= 1e-4 * ref[step], f"step {step}: {loss} vs {ref[step]}"
