"""The torchrun command for one node, its defaults from Slurm's environment, and the node exit
status that keeps the trainer's "requeue me" (3) through torchrun."""

from __future__ import annotations

import shlex
import sys

import pytest

from exaone_train.errors import ConfigError
from launcher.cli import main
from launcher.launch import (
    LaunchSpec,
    exit_code_of_failures,
    run_torchrun,
    spec_from_env,
    torchrun_argv,
)


def test_torchrun_command_line():
    spec = LaunchSpec(nnodes=8, nproc_per_node=8, rdzv_endpoint="node001:29500", rdzv_id="4242",
                      recipe="kexaone_236b", overrides=["run.dir=/lustre/r", "parallel.tp=4"])
    assert torchrun_argv(spec) == [
        "torchrun", "--nnodes", "8", "--nproc-per-node", "8", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "node001:29500", "--rdzv-id", "4242", "--max-restarts", "0",
        "-m", "launcher", "train", "--recipe", "kexaone_236b", "run.dir=/lustre/r",
        "parallel.tp=4"]


def test_train_cmd_replaces_python_m_launcher_train():
    spec = LaunchSpec(1, 2, "localhost:1234", "x", recipe="tiny_cpu", overrides=["a.b=1"],
                      train_cmd=["python", "stub.py"])
    assert torchrun_argv(spec)[-6:] == ["--no-python", "python", "stub.py", "--recipe",
                                        "tiny_cpu", "a.b=1"]


def test_defaults_come_from_slurm_environment():
    env = {"SLURM_JOB_NUM_NODES": "16", "SLURM_GPUS_ON_NODE": "8", "MASTER_ADDR": "gpu-a01",
           "MASTER_PORT": "23456", "SLURM_JOB_ID": "777", "EXAONE_TRAIN_CMD": "python -c 'x'"}
    spec = spec_from_env(env, recipe="kexaone_236b")
    assert (spec.nnodes, spec.nproc_per_node, spec.rdzv_endpoint, spec.rdzv_id) == (
        16, 8, "gpu-a01:23456", "777")
    assert spec.train_cmd == ["python", "-c", "x"]
    given = spec_from_env(env, nnodes=2, nproc_per_node="4", rdzv_endpoint="h:1", rdzv_id="i")
    assert (given.nnodes, given.nproc_per_node, given.rdzv_endpoint, given.rdzv_id) == (
        2, 4, "h:1", "i")
    bare = spec_from_env({})
    assert (bare.nnodes, bare.nproc_per_node, bare.rdzv_endpoint) == (1, "auto", "localhost:29500")


@pytest.mark.parametrize("given, field", [
    ({"rdzv_endpoint": "nohostport"}, "rdzv_endpoint"),
    ({"nproc_per_node": "lots"}, "nproc_per_node"),
    ({"overrides": ["parallel.tp"]}, "overrides"),
])
def test_bad_launch_values_are_config_errors(given, field):
    with pytest.raises(ConfigError) as e:
        spec_from_env({}, **given)
    assert e.value.field == field


def test_exit_status_of_failed_workers():
    assert exit_code_of_failures([3, 3]) == 3  # all saved and asked for a requeue
    assert exit_code_of_failures([3, -15]) == 3  # torchrun stopped the rest after the first
    assert exit_code_of_failures([3, 1]) == 1  # a real failure is not requeued
    assert exit_code_of_failures([1, -15]) == 1
    assert exit_code_of_failures([-15]) == 1  # killed from outside
    assert exit_code_of_failures([-6, 3]) == 1  # a crash (SIGABRT) beside a requeue
    assert exit_code_of_failures([7, 7]) == 7


def test_dry_run_prints_the_command(capsys):
    argv = ["launch", "--dry-run", "--nnodes", "8", "--nproc-per-node", "8", "--rdzv-endpoint",
            "n1:29500", "--rdzv-id", "9", "--recipe", "kexaone_236b", "parallel.ep=4"]
    assert main(argv) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[:2] == ["torchrun", "--nnodes"] and printed[-3:] == [
        "--recipe", "kexaone_236b", "parallel.ep=4"]


def test_launch_checks_the_plan_before_starting(capsys):
    argv = ["launch", "--dry-run", "--nnodes", "6", "--nproc-per-node", "8", "--recipe",
            "kexaone_236b"]
    assert main(argv) == 2  # 48 GPUs cannot hold TP4 x PP8
    assert "world_size=48" in capsys.readouterr().err


def test_run_torchrun_returns_the_workers_requeue_status(tmp_path, monkeypatch):
    """Two real local workers exit 3: torchrun itself would exit 1; the node status is 3."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = LaunchSpec(1, 2, "localhost:0", "t", train_cmd=[sys.executable, "-c",
                                                           "raise SystemExit(3)"])
    assert run_torchrun(torchrun_argv(spec)) == 3
    ok = LaunchSpec(1, 1, "localhost:0", "t", train_cmd=[sys.executable, "-c", "pass"])
    assert run_torchrun(torchrun_argv(ok)) == 0


def test_kexaone_script_environment_runs_the_curriculum_on_every_rank(capsys, monkeypatch):
    """slurm/pretrain_kexaone.sh exports EXAONE_RANK_COMMAND=curriculum: the dry run of its
    launch (8 x 8 GPUs) shows `-m launcher curriculum`, after checking that every stage,
    the `parallel: {auto: true}` ones searched for 64 GPUs, can run there."""
    import re
    from pathlib import Path

    script = (Path(__file__).parents[2] / "slurm" / "pretrain_kexaone.sh").read_text()
    assert re.search(r"^export EXAONE_RANK_COMMAND=\$\{EXAONE_RANK_COMMAND:-curriculum\}$",
                     script, re.M)
    monkeypatch.setenv("EXAONE_RANK_COMMAND", "curriculum")
    argv = ["launch", "--dry-run", "--nnodes", "8", "--nproc-per-node", "8", "--rdzv-endpoint",
            "n1:29500", "--rdzv-id", "9", "--recipe", "kexaone_236b", "run.dir=/lustre/k"]
    assert main(argv) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[-6:] == ["-m", "launcher", "curriculum", "--recipe", "kexaone_236b",
                            "run.dir=/lustre/k"]
    with pytest.raises(ConfigError, match="command"):
        spec_from_env({"EXAONE_RANK_COMMAND": "pretrain"})
