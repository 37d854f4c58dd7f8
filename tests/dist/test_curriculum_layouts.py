"""A layout change between curriculum stages (2 gloo processes: stage 1 DP2, stage 2 CP2): the
driver rebuilds the parallel state and the trainer and loads stage 1's final checkpoint
resharded. Model AND optimizer state carry over: the weights and the Muon/AdamW state entering
stage 2 are bitwise those of the same curriculum without the layout change (stage 2 at DP2,
switched in memory), and stage 2's losses and its short-context validation loss (computed
under CP2) match that run within tests/dist/test_trainer_layouts.py's tolerances."""

from __future__ import annotations

import pytest

from exaone_train.parallel.testing import run_distributed

BASE = ["logging.wandb=false", "optim.clip_grad=0.0", "checkpoint.interval_steps=0",
        "optim.schedule.warmup_tokens=256",
        "data.stages.foundation.seq_length=64", "data.stages.reasoning.seq_length=64",
        "data.stages.validation.seq_length=64", "curriculum.validation.num_samples=4",
        "curriculum.validation.micro_batch_samples=2"]


def _stages(stage2_parallel: str) -> str:
    common = "global_batch_samples: 4, micro_batch_samples: 1"
    return ("curriculum.stages=["
            f"{{name: s1, data_stage: foundation, seq_length_tokens: 64, train_steps: 2, {common}}}, "
            f"{{name: s2, data_stage: reasoning, seq_length_tokens: 64, train_steps: 3, {common}, "
            f"parallel: {stage2_parallel}, gate: {{max_short_loss_increase: 100.0}}}}]")


def _fingerprint(trainer) -> dict[str, str]:
    """sha256 of every weight and every optimizer-state tensor of this rank, by name."""
    import hashlib

    inner = trainer.optimizer.optimizer  # MuonAdamW inside megatron's wrapper
    out = {}
    for name, p in trainer.model[0].named_parameters():
        out[name] = hashlib.sha256(p.detach().numpy().tobytes()).hexdigest()
        for key, value in inner.state.get(p, {}).items():
            if hasattr(value, "numpy"):
                out[f"{name}/{key}"] = hashlib.sha256(value.numpy().tobytes()).hexdigest()
    return out


def _curriculum(run_dir: str, stage2_parallel: str):
    import json
    from pathlib import Path

    from exaone_train.config.load import load_recipe
    from exaone_train.curriculum.driver import run_curriculum
    from exaone_train.train.trainer import Trainer

    entering: dict = {}
    enter = Trainer.enter_stage

    def spy(self, name, span):
        enter(self, name, span)
        if name == "s2":
            entering.update(_fingerprint(self), layout=(
                self.cfg.parallel.cp, len(self.optimizer.optimizer.state)))

    Trainer.enter_stage = spy
    cfg = load_recipe("tiny_cpu", [f"run.dir={run_dir}", *BASE, _stages(stage2_parallel)])
    code = run_curriculum(cfg)
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    record = json.loads((Path(run_dir) / "curriculum.json").read_text())
    return code, entering, [(r["stage"], r["loss"], r["grad_norm"]) for r in rows], record


@pytest.fixture(scope="module", autouse=True)
def shipped_shards():
    from data_pipeline.build import build
    from data_pipeline.recipe import load_data_recipe

    build(load_data_recipe("shipped_corpus", ["build.progress=false"]).build)


def test_layout_change_carries_model_and_optimizer_state(tmp_path):
    from tests.dist.test_trainer_layouts import assert_same_run

    same = run_distributed(_curriculum, 2, str(tmp_path / "dp2"), "{}")
    changed = run_distributed(_curriculum, 2, str(tmp_path / "cp2"), "{cp: 2}")
    for code, *_ in same + changed:
        assert code == 0
    # the last rank writes metrics.jsonl, rank 0 curriculum.json
    (_, enter_same, rows_same, _), (_, enter_cp, rows_cp, _) = same[-1], changed[-1]
    rec_same, rec_cp = same[0][3], changed[0][3]
    assert enter_same.pop("layout")[0] == 1 and enter_cp.pop("layout")[0] == 2
    assert len(enter_cp) > 100 and any("/momentum_buffer" in k for k in enter_cp)
    assert any("/exp_avg" in k for k in enter_cp)
    assert enter_cp == enter_same  # every weight and optimizer-state tensor, bitwise
    assert changed[0][1] == enter_cp | {"layout": changed[0][1]["layout"]}  # both ranks
    s1 = [r for r in rows_same if r[0] == "s1"]
    assert [r for r in rows_cp if r[0] == "s1"] == s1  # same layout: bitwise
    assert_same_run([r[1:] for r in rows_same if r[0] == "s2"],
                    [r[1:] for r in rows_cp if r[0] == "s2"], "stage 2 under CP2")
    a, b = (rec["stages"][1]["attempts"][0]["short_loss"] for rec in (rec_same, rec_cp))
    assert abs(a - b) <= 1e-4 * a, (a, b)
