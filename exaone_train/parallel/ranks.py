"""This process's place in the job, with or without torch.distributed initialised (a single
process is rank 0 of 1): the one home of the rank / world / barrier helpers."""

from __future__ import annotations

import os

import torch.distributed as dist

# torchrun's rendezvous variables. A child process must not inherit them from a process that
# ran an in-process group (`state.setup` sets them for a world of one): the child would join
# the parent's MASTER_PORT, maybe still held (EADDRINUSE) instead of picking a free one.
DIST_ENV_VARS = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                           "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"})


def env_without_rendezvous(**extra: str) -> dict[str, str]:
    """os.environ without `DIST_ENV_VARS`, plus `extra`: the environment of a fresh child job."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV_VARS}
    env.update(extra)
    return env


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
