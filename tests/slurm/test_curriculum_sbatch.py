"""The whole curriculum through the real Slurm path: `sbatch slurm/pretrain_kexaone.sh` (its
rank command is `exaone-train curriculum`) with the smoke recipe (recipes/smoke_curriculum.yaml:
tiny K-EXAONE, two stages of 3 steps, the second `parallel: {auto: true}`) on the local
one-node Slurm, 2 CPU ranks. A job warned with USR1 in the middle of a stage checkpoints, is
requeued, resumes and finishes with every step's loss and LR and every gate result equal to an
uninterrupted job's; a gate that stops the run (exit 4) is not requeued and says why."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_sbatch import job_fields, log_of, release_when_requeued, sbatch, wait_final

pytestmark = pytest.mark.slurm
RECIPE = {"EXAONE_RECIPE": "smoke_curriculum"}


@pytest.fixture(scope="module", autouse=True)
def shipped_shards():
    from data_pipeline.build import build
    from data_pipeline.recipe import load_data_recipe

    build(load_data_recipe("shipped_corpus", ["build.progress=false"]).build)


def per_step(run_dir: Path) -> dict[int, tuple]:
    """step -> (stage, stage_step, loss, lr) from metrics.jsonl (a re-logged step: the last)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out[m["step"]] = (m["stage"], m["stage_step"], m["loss"], m["lr"])
    return out


def gates(run_dir: Path) -> list[tuple]:
    rec = json.loads((run_dir / "curriculum.json").read_text())
    return [(s["stage"], s["status"], a["step"], a["short_loss"], a["gate"]["passed"],
             a["decision"]) for s in rec["stages"] for a in s["attempts"]]


def signal_when_in_stage(job: str, run_dir: Path, stage: str):
    """A poll callback: once metrics.jsonl shows a step of `stage`, send USR1 to the batch
    shell (as Slurm's time-limit warning does) once."""
    sent = []

    def poll(fields: dict[str, str]) -> None:
        metrics = run_dir / "metrics.jsonl"
        if sent or fields.get("JobState") != "RUNNING" or not metrics.is_file():
            return
        if any(json.loads(x)["stage"] == stage for x in metrics.read_text().splitlines()):
            subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
            sent.append(time.time())

    return poll


def test_usr1_mid_stage_requeues_and_resumes_exactly(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = sbatch("pretrain_kexaone.sh", tmp_path, [f"run.dir={ref_dir}"], RECIPE)
    fields = wait_final(ref, 300)
    assert fields["JobState"] == "COMPLETED", log_of(tmp_path, ref)
    job = sbatch("pretrain_kexaone.sh", tmp_path, [f"run.dir={run_dir}"], RECIPE)
    signal, release = signal_when_in_stage(job, run_dir, "long"), release_when_requeued(job)
    fields = wait_final(job, 420, lambda f: (signal(f), release(f)))
    log = log_of(tmp_path, job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log
    assert "command=curriculum" in log
    assert "got SIGUSR1: forwarding to the job step" in log and "requeued (scontrol" in log
    # resumed inside stage `long` (3 steps, starting after step 3): from step 4 or 5
    (resumed,) = re.findall(r"resuming stage long \(attempt 0\) from \S+iter_(\d+)", log)
    assert 3 < int(resumed) < 6, log
    assert per_step(run_dir) == per_step(ref_dir) and len(per_step(ref_dir)) == 6
    assert gates(run_dir) == gates(ref_dir) and [g[1] for g in gates(ref_dir)] == ["passed"] * 2
    plan = json.loads((run_dir / "plan.json").read_text())
    assert set(plan["layout_search"]) == {"long"} and plan["world_size"] == 2
    chosen = plan["layout_search"]["long"]["parallel"]
    assert plan["stages"]["long"]["parallel"]["tp"] == chosen["tp"]
    # the run directory reads back: status (layouts, gates) and the report's plots
    from exaone_train.curriculum.status import status_text
    from launcher.report import write_report

    status = status_text(run_dir)
    assert "completed" in status and "stages done: 2 of 2" in status and "[auto]" in status
    md = write_report(run_dir).read_text()
    assert "![Loss](loss.png)" in md and (run_dir / "report" / "loss.png").is_file()


def test_gate_stop_exits_4_and_is_not_requeued(tmp_path):
    run_dir = tmp_path / "run"
    job = sbatch("pretrain_kexaone.sh", tmp_path, [
        f"run.dir={run_dir}", "curriculum.stages.0.gate.max_short_loss_increase=-100"], RECIPE)
    fields = wait_final(job, 300)
    log = log_of(tmp_path, job)
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "4:0", log
    assert fields["Restarts"] == "0" and "requeue" not in log.replace("not requeued", ""), log
    assert "a curriculum gate stopped the run (exit 4): not requeued" in log
    line = next(x for x in log.splitlines() if "gate stop at stage 'short'" in x)
    assert "short-context validation loss" in line and "> -100.0000" in line, line
    assert job_fields(job)["JobState"] == "FAILED"
