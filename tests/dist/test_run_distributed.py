"""The test helper's ranks run on gloo and the CPU unless a test asks for GPUs: on a machine
with CUDA, `init_distributed` would otherwise give each rank NCCL and `cuda:LOCAL_RANK`, and a
2-process test fails on a one-GPU machine."""

from __future__ import annotations

import os

import pytest
import torch

from exaone_train.parallel.testing import run_distributed


def _where_am_i() -> tuple:
    import torch.distributed as dist

    from exaone_train.parallel import state

    return (os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available(),
            dist.get_backend(), str(state.device()))


def test_ranks_see_no_gpu_unless_asked():
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert run_distributed(_where_am_i, 2) == [("", False, "gloo", "cpu")] * 2
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before  # the parent's is untouched


def test_asking_for_more_gpus_than_there_are_fails_clearly():
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(RuntimeError, match="needs 2 GPUs"):
        run_distributed(_where_am_i, 2, gpus=True)


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_ranks_get_the_callers_environment_as_it_is_at_the_call(monkeypatch):
    """The CPU ranks fork from a forkserver started at the first call: an environment variable
    set after it started still reaches them (what a spawned rank would see)."""
    assert run_distributed(_env, 1, "EXAONE_TRAIN_PROBE") == [None]
    monkeypatch.setenv("EXAONE_TRAIN_PROBE", "set after the server started")
    assert run_distributed(_env, 2, "EXAONE_TRAIN_PROBE") == ["set after the server started"] * 2
