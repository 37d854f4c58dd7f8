"""Layouts that combine parallelisms (4 gloo processes) give the 1-process run: what a 256K
K-EXAONE stage combines (TP2 + SP with CP2: sequence split twice, MoE, MTP, document masks)
and a pipeline with data parallelism, expert parallelism and the distributed optimizer (PP2 x
DP2 x EP2, optimizer state sharded over DP). Same tolerances and rationale as
test_trainer_layouts.py; a reduction missing over one of the combined groups (e.g. router
statistics over TP but not CP, expert grads over EP but not DP) shows there as a step-0 grad
norm error of > 1e-2."""

from __future__ import annotations

import pytest

from exaone_train.parallel.testing import run_distributed
from tests.dist.test_trainer_layouts import _INIT_DIRS, _train, assert_same_run, reference_for


@pytest.mark.parametrize("layout", [
    ["parallel.tp=2", "parallel.sequence_parallel=true", "parallel.cp=2"],
    ["parallel.pp=2", "parallel.ep=2", "parallel.distributed_optimizer=true"],
], ids=["tp2_sp_cp2", "pp2_dp2_ep2_distopt"])
def test_four_process_layout_matches_single_process(tmp_path, layout):
    reference = reference_for("tiny_kexaone", tmp_path / "ref")
    init = _INIT_DIRS[("tiny_kexaone", ())]
    losses = run_distributed(_train, 4, str(tmp_path / "run"),
                             ["model=tiny_kexaone", f"train.init_from={init}", *layout])
    assert all(run == losses[-1] for run in losses), "every rank reports the same losses"
    assert_same_run(reference, losses[-1], str(layout))
