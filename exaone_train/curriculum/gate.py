"""A stage's gate: evaluate its criteria on the trainer's model (collective; every rank gets the
same result) and decide what comes next from its policy."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from exaone_train.curriculum.config import GateConfig, ValidationConfig

log = logging.getLogger("exaone_train")

NEXT, RETRY, STOP, CONTINUE = "next", "retry", "stop", "continue"


def criteria(gate: GateConfig, validation: ValidationConfig) -> dict[str, Any]:
    """What a gate result depends on besides the weights: a recorded result of a stage-final
    checkpoint is reused only while these are unchanged."""
    return {"niah": None if gate.niah is None else dataclasses.asdict(gate.niah),
            "max_short_loss_increase": gate.max_short_loss_increase,
            "validation": dataclasses.asdict(validation)}


def niah_name(stage: str, attempt: int) -> str:
    """niah/<stage>.json for the planned length, niah/<stage>_retry<k>.json after retry k."""
    return stage if attempt == 0 else f"{stage}_retry{attempt}"


def evaluate(trainer: Any, gate: GateConfig, stage: str, attempt: int, short_loss: float | None,
             short_loss_before: float | None, run_dir: Path) -> dict[str, Any]:
    """{"passed", "reasons" (why not), "niah" (summary or None)} of `gate` (collective)."""
    reasons: list[str] = []
    limit = gate.max_short_loss_increase
    if limit is not None:
        assert short_loss is not None and short_loss_before is not None  # plan_curriculum
        rise = short_loss - short_loss_before
        if rise > limit:
            reasons.append(f"short-context validation loss {short_loss:.4f} vs "
                           f"{short_loss_before:.4f} before the stage: {rise:+.4f} > {limit:+.4f}")
    niah = None
    if gate.niah is not None:
        from exaone_train.eval.niah import run_niah  # lazy: only gates that ask for NIAH

        name = niah_name(stage, attempt)
        report = run_niah(trainer, gate.niah, run_dir, name)
        niah = {"passed": bool(report.passed), "mean_accuracy": float(report.mean_accuracy),
                "min_cell_accuracy": float(report.min_cell_accuracy),
                "token_accuracy": float(report.token_accuracy),
                "report": f"niah/{name}.json"}
        _log_niah(report, gate.niah, run_dir / "niah" / f"{name}.png")
        if not report.passed:
            reasons.append(f"NIAH mean accuracy {report.mean_accuracy:.3f} (needs >= "
                           f"{gate.niah.pass_accuracy}), worst cell {report.min_cell_accuracy:.3f}"
                           f" (needs >= {gate.niah.min_cell_accuracy})")
    return {"passed": not reasons, "reasons": reasons, "niah": niah}


def _log_niah(report: Any, cfg: Any, png: Path) -> None:
    """The grid (coloured on a terminal), the verdict in green PASS / red FAIL, the heatmap."""
    import sys

    from exaone_train.eval.niah import grid_lines
    from exaone_train.parallel import ranks

    if not ranks.is_rank0():
        return
    tty = sys.stderr.isatty()
    verdict = "PASS" if report.passed else "FAIL"
    if tty:
        verdict = f"\033[1;{32 if report.passed else 31}m{verdict}\033[0m"
    log.info("NIAH %s: exact match %.2f (needs >= %.2f), worst cell %.2f (needs >= %.2f): %s; "
             "heatmap %s", report.name, report.mean_accuracy, cfg.pass_accuracy,
             report.min_cell_accuracy, cfg.min_cell_accuracy, verdict, png)
    for line in grid_lines(report, color=tty):
        log.info("   %s", line)


def decide(passed: bool, gate: GateConfig, attempt: int) -> str:
    """next | retry | stop | continue, from the result and the gate's policy."""
    if passed:
        return NEXT
    if gate.on_fail == "continue":
        return CONTINUE
    if gate.on_fail == "retry" and attempt < gate.max_retries:
        return RETRY
    return STOP
