"""Where a curriculum run stands, from its run directory alone (curriculum.json, plan.json,
metrics.jsonl): `exaone-train curriculum status RUN_DIR`, and the one line slurm/train.sh logs
when a run stopped for good (`why_stopped`). Reads files only: runs on a login node while the
job trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exaone_train.errors import ConfigError


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def last_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The newest line of metrics.jsonl (None without one)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    with path.open() as f:
        for line in f:
            if line.strip():
                last = line
    return json.loads(last) if last else None


def load_record(run_dir: Path) -> dict[str, Any]:
    record = read_json(Path(run_dir) / "curriculum.json")
    if record is None:
        raise ConfigError("RUN_DIR", str(run_dir), "has no curriculum.json (not a curriculum "
                                                    "run, or it has not started yet)")
    return record


def _layout(stage_plan: dict[str, Any], plan_json: dict[str, Any] | None) -> str:
    p = stage_plan["parallel"]
    text = f"TP{p['tp']} PP{p['pp']} VPP{p.get('virtual_pp') or '-'} EP{p['ep']} CP{p['cp']}"
    stage = ((plan_json or {}).get("stages") or {}).get(stage_plan["name"])
    if stage:
        par, mem = stage["parallel"], stage["memory"]
        text += (f" DP{par['dp']} recompute={par['recompute']}"
                 f" {mem['total_per_gpu_gib']:.1f} GiB/GPU (plan)")
    if stage_plan["name"] in ((plan_json or {}).get("layout_search") or {}):
        text += " [auto]"
    return text


def _attempt_line(a: dict[str, Any]) -> str:
    gate = a["gate"]
    loss = "" if a["short_loss"] is None else f", short loss {a['short_loss']:.4f}"
    niah = gate.get("niah")
    niah_text = "" if not niah else (f", NIAH mean {niah['mean_accuracy']:.3f} min cell "
                                     f"{niah['min_cell_accuracy']:.3f} ({niah['report']})")
    verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["reasons"])
    return (f"      attempt {a['attempt']} at step {a['step']}{loss}{niah_text}: {verdict} -> "
            f"{a['decision']}")


def status_text(run_dir: Path) -> str:
    """A page: the run's state, then per stage status, steps, tokens, retries, layout, gates."""
    run_dir = Path(run_dir)
    rec = load_record(run_dir)
    plan_json = read_json(run_dir / "plan.json")
    last = last_metrics(run_dir)
    lines = [f"curriculum {rec['name']} in {run_dir}: {rec['status']}"
             + (f" ({rec['message']})" if rec.get("message") else "")]
    if last is not None:
        lines.append(f"  now: stage {last.get('stage')} step {last.get('stage_step')} "
                     f"(global step {last.get('step')}), loss {last.get('loss', float('nan')):.4f}"
                     f", lr {last.get('lr', float('nan')):.3e}")
    if rec.get("initial_short_loss") is not None:
        lines.append(f"  initial short-context loss {rec['initial_short_loss']:.4f}")
    done = sum(1 for s in rec["stages"] if s["status"] in ("passed", "continued"))
    lines.append(f"  stages done: {done} of {len(rec['stages'])}")
    for st, sp in zip(rec["stages"], rec["plan"]["stages"], strict=True):
        lines.append(f"  {st['stage']:<14} {st['status']:<10} {st['steps']:>9,} of "
                     f"{sp['steps']:,} steps {st['tokens']:>16,} tokens  retries {st['retries']}"
                     f"  seq {sp['seq_length_tokens']}  {_layout(sp, plan_json)}")
        lines += [_attempt_line(a) for a in st["attempts"]]
    return "\n".join(lines)


def why_stopped(run_dir: Path) -> str:
    """One line: why the run stopped (the failing gate's stage, figures and NIAH report, or
    the driver's message), for slurm/train.sh's log."""
    run_dir = Path(run_dir)
    rec = load_record(run_dir)
    failed = [s for s in rec["stages"] if s["status"] == "failed" and s["attempts"]]
    if not failed:
        return f"curriculum {rec['status']}: {rec.get('message') or 'no message'} ({run_dir})"
    st = failed[-1]
    a = st["attempts"][-1]
    niah = a["gate"].get("niah")
    report = f"; NIAH report {run_dir / niah['report']}" if niah else "; no NIAH in this gate"
    loss = "" if a["short_loss"] is None else (
        f"; short-context loss {a['short_loss']:.4f} (before the stage "
        f"{a['short_loss_before']:.4f})")
    return (f"gate stop at stage '{st['stage']}' attempt {a['attempt']} (step {a['step']}): "
            f"{'; '.join(a['gate']['reasons'])}{loss}{report}")
