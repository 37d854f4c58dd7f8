"""A run's report from its directory (metrics.jsonl, curriculum.json, plan.json, niah/*.json):
PNG plots (loss and MTP loss, LR, tokens/s, grad norm, expert load min/max/CV, validation loss
per stage, NIAH heatmaps) and `report.md` linking them. `exaone-train report RUN_DIR`; the demo
writes one at its end. Reads files only (matplotlib, Agg backend): runs beside a training job."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from exaone_train.curriculum.status import read_json, status_text
from exaone_train.errors import ConfigError


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one dict per step; a step logged again after a resume keeps the last."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError("RUN_DIR", str(run_dir), "has no metrics.jsonl (no step trained yet)")
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            by_step[m["step"]] = m
    return [by_step[s] for s in sorted(by_step)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stage_lines(ax, rows: list[dict]) -> None:
    """A dotted line and the stage's name where each stage starts."""
    previous = None
    for r in rows:
        if r.get("stage") != previous:
            previous = r.get("stage")
            ax.axvline(r["step"], color="grey", linestyle=":", linewidth=0.8)
            ax.text(r["step"], 1.0, f" {previous}", transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top", color="grey")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def line_plot(rows: list[dict], keys: dict[str, str], ylabel: str, title: str,
              path: Path, log_y: bool = False) -> Path | None:
    """Metrics `keys` (key -> legend label) over steps; None when no row has any of them."""
    series = {label: _series(rows, key) for key, label in keys.items()}
    if not any(xs for xs, _ in series.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for label, (xs, ys) in series.items():
        if xs:
            ax.plot(xs, ys, label=label, linewidth=1)
    if log_y:
        ax.set_yscale("log")
    _stage_lines(ax, rows)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def with_expert_load(rows: list[dict]) -> list[dict]:
    """Each row with the min and max expert load (tokens routed to an expert this step) over
    the MoE layers, and the mean coefficient of variation, as `expert_load_*` keys."""
    out = []
    for r in rows:
        mins = [v for k, v in r.items() if k.startswith("moe/layer") and k.endswith("/load_min")]
        maxs = [v for k, v in r.items() if k.startswith("moe/layer") and k.endswith("/load_max")]
        cvs = [v for k, v in r.items() if k.startswith("moe/layer") and k.endswith("/load_cv")]
        extra = {} if not mins else {"expert_load_min": min(mins), "expert_load_max": max(maxs),
                                     "expert_load_cv": statistics.fmean(cvs)}
        out.append({**r, **extra})
    return out


def validation_plot(record: dict[str, Any], path: Path) -> Path | None:
    """Short-context validation loss before the first stage and after each gated attempt."""
    points = [("initial", record.get("initial_short_loss"))]
    points += [(f"{s['stage']}" + (f" r{a['attempt']}" if a["attempt"] else ""), a["short_loss"])
               for s in record["stages"] for a in s["attempts"]]
    points = [(n, v) for n, v in points if v is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(range(len(points)), [v for _, v in points], marker="o")
    ax.set_xticks(range(len(points)), [n for n, _ in points], rotation=30, fontsize=7)
    ax.set_ylabel("validation loss (nats)")
    ax.set_title("short-context validation loss at stage ends", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def niah_heatmaps(run_dir: Path, out: Path) -> list[Path]:
    """One heatmap per niah/<name>.json (eval/niah.py's own `heatmap`)."""
    from exaone_train.eval.niah import heatmap

    paths = []
    for report in sorted((run_dir / "niah").glob("*.json")):
        path = out / f"niah_{report.stem}.png"
        heatmap(json.loads(report.read_text()), path)
        paths.append(path)
    return paths


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Plots and report.md under `out` (default RUN_DIR/report); returns report.md's path."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = with_expert_load(read_metrics(run_dir))
    plots = {
        "Loss": line_plot(rows, {"loss": "loss", "mtp_loss": "MTP loss"}, "loss (nats)",
                          "training loss", out / "loss.png"),
        "Learning rate": line_plot(rows, {"lr": "lr"}, "LR", "learning rate", out / "lr.png"),
        "Throughput": line_plot(rows, {"tokens_per_s": "tokens/s"}, "tokens/s", "throughput",
                                out / "tokens_per_s.png"),
        "Gradient norm": line_plot(rows, {"grad_norm": "grad norm"}, "norm", "gradient norm",
                                   out / "grad_norm.png", log_y=True),
        "Expert load": line_plot(rows, {"expert_load_min": "min over layers",
                                        "expert_load_max": "max over layers"},
                                 "tokens per expert", "expert load (min/max per step)",
                                 out / "expert_load.png"),
        "Expert load CV": line_plot(rows, {"expert_load_cv": "CV (mean over layers)"},
                                    "CV", "expert load coefficient of variation",
                                    out / "expert_load_cv.png"),
    }
    record = read_json(run_dir / "curriculum.json")
    if record is not None:
        plots["Validation loss per stage"] = validation_plot(record, out / "validation.png")
    heatmaps = niah_heatmaps(run_dir, out)
    md = out / "report.md"
    md.write_text(_markdown(run_dir, rows, record, plots, heatmaps))
    return md


def _markdown(run_dir: Path, rows: list[dict], record: dict | None,
              plots: dict[str, Path | None], heatmaps: list[Path]) -> str:
    last = rows[-1]
    lines = [f"# Run report: {run_dir}", "",
             f"{len(rows)} steps, {last.get('consumed_tokens', 0):,} tokens; last loss "
             f"{last.get('loss', float('nan')):.4f}, lr {last.get('lr', float('nan')):.3e}.", ""]
    if record is not None:
        lines += ["## Curriculum", "", "```", status_text(run_dir), "```", ""]
    for title, path in plots.items():
        if path is not None:
            lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    if heatmaps:
        lines += ["## NIAH", ""] + [f"![{p.stem}]({p.name})" for p in heatmaps] + [""]
    missing = [t for t, p in plots.items() if p is None]
    if missing:
        lines += [f"Not plotted (no such metric in metrics.jsonl): {', '.join(missing)}.", ""]
    return "\n".join(lines)
