"""`exaone-train curriculum status RUN_DIR`, the line slurm/train.sh logs at a gate stop, and
`exaone-train report RUN_DIR`, on a run directory written by the driver's own classes
(CurriculumRecord with the smoke curriculum's plan, metrics.jsonl lines as the JSONL logger
writes them, a NIAH report through eval/niah.py's write_report). The Slurm tests run both on
real runs (tests/slurm/test_curriculum_sbatch.py)."""

from __future__ import annotations

import json

from exaone_train.config.load import load_recipe
from exaone_train.curriculum.record import CurriculumRecord
from exaone_train.curriculum.stages import plan_curriculum
from exaone_train.eval.niah import NiahReport
from exaone_train.eval.niah import write_report as write_niah
from launcher.cli import main


def _run_dir(tmp_path):
    cfg = load_recipe("smoke_curriculum", [f"run.dir={tmp_path}"])
    rec = CurriculumRecord(tmp_path, plan_curriculum(cfg).to_dict(), fresh=True)
    rec.data["initial_short_loss"] = 8.3
    rec.progress(0, 3, 1536)
    rec.add_attempt(0, {"attempt": 0, "step": 3, "stage_steps": 3, "stage_tokens": 1536,
                        "consumed_tokens": 1536, "short_loss": 8.1, "short_loss_before": 8.3,
                        "gate": {"passed": True, "reasons": [], "niah": None, "criteria": {}},
                        "decision": "next"})
    niah = NiahReport(False, 0.25, 0.0, {128: {0.0: 0.5, 1.0: 0.0}}, name="long_retry1")
    write_niah(niah, tmp_path)
    rec.progress(1, 5, 2560)
    rec.stage(1)["retries"] = 1
    rec.add_attempt(1, {"attempt": 1, "step": 8, "stage_steps": 5, "stage_tokens": 2560,
                        "consumed_tokens": 4096, "short_loss": 7.9, "short_loss_before": 8.1,
                        "gate": {"passed": False, "reasons": ["NIAH mean accuracy 0.250"],
                                 "niah": {"passed": False, "mean_accuracy": 0.25,
                                          "min_cell_accuracy": 0.0,
                                          "report": "niah/long_retry1.json"}, "criteria": {}},
                        "decision": "stop"})
    rec.finish("stopped", "curriculum stopped: stage 'long' failed its gate")
    rows = [{"step": s, "loss": 9.0 - 0.1 * s, "mtp_loss": 9.1 - 0.1 * s, "lr": 1e-3,
             "grad_norm": 1.0 + s, "tokens_per_s": 300.0, "stage": "short" if s <= 3 else
             "long", "stage_step": s if s <= 3 else s - 3, "consumed_tokens": 512 * s,
             "moe/layer1/load_min": 10.0 + s, "moe/layer1/load_max": 50.0,
             "moe/layer1/load_cv": 0.3, "moe/layer2/load_min": 5.0, "moe/layer2/load_max": 60.0,
             "moe/layer2/load_cv": 0.5} for s in range(1, 9)]
    rows.insert(5, {**rows[4], "loss": 123.0})  # step 5 logged twice (resumed): the last wins
    rows[4], rows[5] = rows[5], rows[4]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_status_shows_stages_gates_layouts_and_why_it_stopped(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["curriculum", "status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "curriculum smoke" in out and "stopped" in out and "stages done: 1 of 2" in out
    assert "now: stage long step 5 (global step 8)" in out
    short, long = (next(x for x in out.splitlines() if x.strip().startswith(n))
                   for n in ("short ", "long "))
    assert "passed" in short and "3 of 3 steps" in short and "TP1 PP1" in short
    assert "failed" in long and "retries 1" in long and "seq 256" in long
    assert "NIAH mean 0.250 min cell 0.000 (niah/long_retry1.json): FAILED" in out
    assert main(["curriculum", "status", "--why-stopped", "--recipe", "smoke_curriculum",
                 f"run.dir={run}"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("gate stop at stage 'long' attempt 1 (step 8): NIAH mean accuracy")
    assert f"NIAH report {run}/niah/long_retry1.json" in line and "7.9000" in line


def test_report_writes_the_plots_and_links_them(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", str(run)]) == 0
    md_path = run / "report" / "report.md"
    assert capsys.readouterr().out.strip() == str(md_path)
    md = md_path.read_text()
    links = [x.split("](")[1].rstrip(")") for x in md.splitlines() if x.startswith("![")]
    assert set(links) == {"loss.png", "lr.png", "tokens_per_s.png", "grad_norm.png",
                          "expert_load.png", "expert_load_cv.png", "validation.png",
                          "niah_long_retry1.png"}
    for name in links:
        assert (run / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8 steps" in md and "stage long" in md
    from launcher.report import read_metrics

    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))
    assert read_metrics(run)[4]["loss"] == 9.0 - 0.5  # the later line of step 5
