"""The curriculum driver on one process, on the shipped corpus: three short stages (a data-stage
change, then a length change) run end to end with one LR schedule over the cumulative tokens and
each stage reading its own data from sample 0; gate policies (stop, retry) with the
short-context validation-loss criterion forced to fail or pass by its threshold; a run killed
after stage 1's final checkpoint and again mid-stage 2 continues exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exaone_train.config.load import load_recipe
from exaone_train.curriculum.driver import GATE_STOP_EXIT_CODE, run_curriculum
from exaone_train.curriculum.stages import plan_curriculum
from exaone_train.optim.schedule import lr_at
from exaone_train.parallel import state
from exaone_train.train.trainer import Trainer
from tests.helpers.train_runs import REPO, _env, losses

# foundation and reasoning at 64 tokens, domain at 128; validation at 64
BASE = ["logging.wandb=false", "checkpoint.interval_steps=2", "optim.schedule.warmup_tokens=512",
        "optim.schedule.decay_fraction=0.4",
        "data.stages.foundation.seq_length=64", "data.stages.reasoning.seq_length=64",
        "data.stages.domain.seq_length=128", "data.stages.validation.seq_length=64",
        "curriculum.validation.num_samples=4", "curriculum.validation.micro_batch_samples=2"]


def stage(name: str, data: str, seq: int, steps: int, gate: str = "{}") -> str:
    return (f"{{name: {name}, data_stage: {data}, seq_length_tokens: {seq}, train_steps: {steps},"
            f" global_batch_samples: 4, micro_batch_samples: 2, gate: {gate}}}")


THREE = "curriculum.stages=[" + ", ".join([
    stage("s1", "foundation", 64, 3),
    stage("s2", "reasoning", 64, 4, "{max_short_loss_increase: 100.0}"),
    stage("s3", "domain", 128, 2)]) + "]"


@pytest.fixture(scope="module", autouse=True)
def shipped_shards():
    from data_pipeline.build import build
    from data_pipeline.recipe import load_data_recipe

    build(load_data_recipe("shipped_corpus", ["build.progress=false"]).build)


def _cfg(run_dir, *overrides):
    return load_recipe("tiny_cpu", [f"run.dir={run_dir}", *BASE, *overrides])


def _run(cfg) -> int:
    try:
        return run_curriculum(cfg)
    finally:
        state.teardown()


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _record(run_dir) -> dict:
    return json.loads((Path(run_dir) / "curriculum.json").read_text())


def _attempts(run_dir, i: int) -> list[tuple]:
    return [(a["attempt"], a["step"], a["decision"]) for a in _record(run_dir)["stages"][i]["attempts"]]


def test_three_stages_one_schedule_each_stage_its_own_data(tmp_path, monkeypatch):
    seen = []
    original = Trainer.next_batches

    def probe(self):
        seen.append((self.stage_name, self.data.cfg.name, self.data.consumed_samples,
                     self.cfg.train.seq_length_tokens))
        return original(self)

    monkeypatch.setattr(Trainer, "next_batches", probe)
    cfg = _cfg(tmp_path / "run", THREE)
    assert _run(cfg) == 0
    assert seen == [("s1", "foundation", i, 64) for i in (0, 4, 8)] + \
        [("s2", "reasoning", i, 64) for i in (0, 4, 8, 12)] + \
        [("s3", "domain", i, 128) for i in (0, 4)]
    plan = plan_curriculum(cfg)
    rows = _metrics(tmp_path / "run")
    assert [r["stage"] for r in rows] == ["s1"] * 3 + ["s2"] * 4 + ["s3"] * 2
    assert [r["stage_step"] for r in rows] == [1, 2, 3, 1, 2, 3, 4, 1, 2]
    # one WSD over the cumulative tokens: warmup in s1, decay at the end of s3
    before = 0
    for r in rows:
        assert r["lr"] == lr_at(before, plan.optim), r
        before = r["consumed_tokens"]
    assert before == plan.total_tokens == 3 * 256 + 4 * 256 + 2 * 512
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == plan.optim.lr_peak > rows[-2]["lr"] > rows[-1]["lr"] > 0
    rec = _record(tmp_path / "run")
    assert rec["status"] == "completed" and rec["initial_short_loss"] > 7.5
    assert [(s["stage"], s["status"], s["steps"], s["tokens"]) for s in rec["stages"]] == \
        [("s1", "passed", 3, 768), ("s2", "passed", 4, 1024), ("s3", "passed", 2, 1024)]
    shorts = [s["attempts"][0]["short_loss"] for s in rec["stages"]]
    assert shorts[0] < rec["initial_short_loss"] and all(x is not None for x in shorts)
    ckpts = tmp_path / "run" / "checkpoints"
    for step, name, data, samples in ((3, "s1", "foundation", 12), (7, "s2", "reasoning", 16),
                                      (9, "s3", "domain", 8)):
        d = ckpts / f"iter_{step:07d}"
        assert json.loads((d / "manifest.json").read_text())["keep"]  # stage-final
        ts = json.loads((d / "train_state.json").read_text())
        assert (ts["stage"], ts["data"]["stage"], ts["data"]["consumed_samples"]) == \
            (name, data, samples)
        assert ts["curriculum"]["stage"] == name
    ts = json.loads((ckpts / "iter_0000009" / "train_state.json").read_text())
    assert ts["stages"]["s1"]["steps"] == 3 and ts["stages"]["s2"]["consumed_tokens"] == 1024


TWO = [stage("s1", "foundation", 64, 2, "{max_short_loss_increase: -100.0, on_fail: stop}"),
       stage("s2", "reasoning", 64, 1)]


def test_gate_stop_exits_4_keeps_the_stage_and_continues_after_a_recipe_change(tmp_path):
    run = tmp_path / "run"
    stages = "curriculum.stages=[" + ", ".join(TWO) + "]"
    stages = [stages, "optim.schedule.warmup_tokens=256"]
    assert _run(_cfg(run, *stages)) == GATE_STOP_EXIT_CODE
    rec = _record(run)
    assert rec["status"] == "stopped" and "stage 's1' failed its gate" in rec["message"]
    assert _attempts(run, 0) == [(0, 2, "stop")] and rec["stages"][1]["status"] == "pending"
    manifest = json.loads((run / "checkpoints" / "iter_0000002" / "manifest.json").read_text())
    assert manifest["keep"] and len(_metrics(run)) == 2
    # the same command stops again at once: the recorded result of that checkpoint stands
    assert _run(_cfg(run, *stages)) == GATE_STOP_EXIT_CODE
    assert len(_metrics(run)) == 2
    # on_fail=continue: nothing of s1 is trained again, s2 starts from s1's final checkpoint
    assert _run(_cfg(run, *stages, "curriculum.stages.0.gate.on_fail=continue")) == 0
    assert [(r["step"], r["stage"]) for r in _metrics(run)] == [(1, "s1"), (2, "s1"), (3, "s2")]
    assert [s["status"] for s in _record(run)["stages"]] == ["continued", "passed"]


def _retry_stages(threshold: float) -> str:
    gate = (f"{{max_short_loss_increase: {threshold}, on_fail: retry, max_retries: 2, "
            "retry_tokens: 200}")  # one step of 4 x 64 tokens per retry
    return "curriculum.stages=[" + ", ".join([stage("s1", "foundation", 64, 2, gate),
                                                stage("s2", "reasoning", 64, 4)]) + "]"


def test_gate_retry_trains_more_at_the_stage_end_lr_then_stops_or_passes(tmp_path):
    # s1 ends half way up the warmup
    warm = ["optim.schedule.warmup_tokens=1024", "optim.schedule.decay_fraction=0.1"]
    run = tmp_path / "run"
    cfg = _cfg(run, _retry_stages(-100.0), *warm)
    assert _run(cfg) == GATE_STOP_EXIT_CODE
    assert _attempts(run, 0) == [(0, 2, "retry"), (1, 3, "retry"), (2, 4, "stop")]
    rows = _metrics(run)
    half = lr_at(512, plan_curriculum(cfg).optim)
    assert half == pytest.approx(0.5 * cfg.optim.lr_peak)
    assert [r["lr"] for r in rows[2:]] == [half, half]  # retries hold the LR of s1's end
    s1 = _record(run)["stages"][0]
    assert (s1["steps"], s1["tokens"], s1["retries"], s1["status"]) == (4, 1024, 2, "failed")
    rises = [a["short_loss"] - a["short_loss_before"] for a in s1["attempts"]]
    # a new threshold is a new gate: evaluated again on the last checkpoint, it passes
    assert _run(_cfg(run, _retry_stages(100.0), *warm)) == 0
    assert _attempts(run, 0)[-1] == (2, 4, "next")
    assert [r["stage"] for r in _metrics(run)] == ["s1"] * 4 + ["s2"] * 4
    # fail at the planned length, pass after one retry (the validation loss kept falling)
    assert rises[1] < rises[0]
    run2 = tmp_path / "run2"
    assert _run(_cfg(run2, _retry_stages((rises[0] + rises[1]) / 2), *warm)) == 0
    assert _attempts(run2, 0) == [(0, 2, "retry"), (1, 3, "next")]
    assert _record(run2)["stages"][0]["tokens"] == 3 * 256


# ---- kill and relaunch (real processes, fp32, exact) -----------------------------------------
def _launch(run_dir, fault: str | None = None) -> int:
    cmd = [sys.executable, "-m", "launcher", "curriculum", "tiny_cpu", f"run.dir={run_dir}",
           *BASE, THREE]
    tag = f"{run_dir}:{fault}"
    env = _env({"EXAONE_TRAIN_FAULT": fault or "", "CURRICULUM_TEST_LAUNCH": tag})
    try:
        with open(Path(run_dir).with_suffix(".log"), "ab") as log:
            return subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=300).returncode
    finally:
        _kill_leftovers(tag)


def _kill_leftovers(tag: str) -> None:
    """A process killed inside a save (os._exit) leaves dist_checkpointing's spawned
    multiprocessing Manager behind, orphaned: end the ones this launch started."""
    import os
    import signal

    marker = f"CURRICULUM_TEST_LAUNCH={tag}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def _gates(run_dir) -> list:
    return [(s["stage"], [(a["step"], a["short_loss"], a["decision"]) for a in s["attempts"]])
            for s in _record(run_dir)["stages"]]


def test_killed_twice_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    assert _launch(straight) == 0
    run = tmp_path / "run"
    # killed in the first save of s2 (step 4): the newest checkpoint is s1's final one (step 3)
    assert _launch(run, "kill_during_save@4") == 137
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000003"
    # relaunched: s1's recorded gate stands, s2 runs; killed again before publishing step 7
    assert _launch(run, "kill_before_rename@7") == 137
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_0000006"  # mid-s2
    assert _launch(run) == 0
    log = run.with_suffix(".log").read_text()
    assert "resuming stage s1 (attempt 0)" in log and "resuming stage s2 (attempt 0)" in log
    assert "gate result recorded at step 3 reused" in log
    assert losses(run) == losses(straight) and len(losses(run)) == 9  # loss and LR, exact
    assert _gates(run) == _gates(straight)  # validation losses at every stage end, exact
    assert _record(run)["status"] == "completed"


def _niah_stages(pass_accuracy: float) -> list[str]:
    niah = (f"{{lengths: [64], depths: [0.0, 1.0], samples_per_cell: 2, "
            f"pass_accuracy: {pass_accuracy}}}")
    return ["optim.schedule.warmup_tokens=128", "curriculum.stages=[" + ", ".join([
        stage("s1", "foundation", 64, 1, f"{{niah: {niah}, on_fail: stop}}"),
        stage("s2", "reasoning", 64, 1)]) + "]"]


def test_niah_gate_writes_its_report_and_decides_the_stage(tmp_path):
    # After one step the tiny model cannot copy a 5-digit needle (exact-match accuracy 0 on
    # every cell), so a gate asking for 100% stops the curriculum with NIAH as the reason, and
    # the same gate asking for 0% lets it go on. Either way niah/s1.json is the report the
    # gate read, and curriculum.json points at it.
    run = tmp_path / "run"
    assert _run(_cfg(run, *_niah_stages(1.0))) == GATE_STOP_EXIT_CODE
    rec = _record(run)
    gate = rec["stages"][0]["attempts"][0]["gate"]
    assert gate["niah"]["report"] == "niah/s1.json" and not gate["niah"]["passed"]
    assert any("NIAH" in r or "niah" in r for r in gate["reasons"]), gate["reasons"]
    report = json.loads((run / "niah" / "s1.json").read_text())
    assert report["passed"] is False and report["mean_accuracy"] == gate["niah"]["mean_accuracy"]
    assert (run / "niah" / "s1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run2 = tmp_path / "run2"
    assert _run(_cfg(run2, *_niah_stages(0.0))) == 0
    assert [s["status"] for s in _record(run2)["stages"]] == ["passed", "passed"]
    assert json.loads((run2 / "niah" / "s1.json").read_text())["passed"] is True
