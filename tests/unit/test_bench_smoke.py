"""bench/step_overhead.py runs end to end: our Trainer and the bare megatron-core loop both
train the tiny model and report positive step times."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("step_overhead", ROOT / "bench" / "step_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_overhead_reports_both_timings(capsys):
    bench = _load_bench()
    figures = bench.main(["--steps", "2", "--warmup", "1", "--seq-len", "64", "--block", "1"])
    assert figures["ours_ms"] > 0 and figures["bare_ms"] > 0
    assert figures["ratio"] == pytest.approx(figures["ours_ms"] / figures["bare_ms"])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("step_overhead: ours ") and ("PASS" in summary or "MISS" in summary)
