"""Process groups. The only module that initialises torch.distributed and megatron-core's
parallel_state; everything else asks parallel_state for ranks and groups."""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from exaone_train.config.schema import ParallelConfig
from exaone_train.errors import ConfigError
from exaone_train.parallel import cpu_support, ranks
from exaone_train.parallel.dims import ParallelDims


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The device this rank computes on: its GPU (`cuda:LOCAL_RANK`, selected by
    `init_distributed`) when CUDA is visible, else the CPU (gloo, `cpu_support`).

    The one answer to "where": the model's parameters, every micro-batch, loss accumulators,
    statistics and the tensors of every collective live here (NCCL takes only CUDA tensors of
    the current device; gloo only CPU ones here)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(timeout_minutes: int = 30) -> None:
    """torch.distributed from torchrun's env (or a 1-process group when run plainly): NCCL on
    GPU `LOCAL_RANK` when CUDA is visible, gloo on the CPU otherwise."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain `python`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        cpu_support.install()
    dist.init_process_group(backend="nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))


def init_model_parallel(p: ParallelConfig, seed: int) -> None:
    """megatron-core's TP/PP/VPP/CP/EP/DP groups for `p`, and the per-rank RNG streams."""
    dims = ParallelDims.of(p, dist.get_world_size())
    rule = dims.world_rule()
    if rule:
        raise ConfigError("parallel", dims.describe(), rule)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.virtual_pp,
        context_parallel_size=p.cp,
        expert_model_parallel_size=p.ep,
        expert_tensor_parallel_size=p.etp,
    )
    model_parallel_cuda_manual_seed(seed)


def setup(p: ParallelConfig, seed: int) -> None:
    init_distributed()
    init_model_parallel(p, seed)


def teardown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def current_dims() -> ParallelDims:
    """The layout this process runs under (megatron-core's groups; world 1 without them)."""
    ps = parallel_state
    if not ps.model_parallel_is_initialized():
        return ParallelDims(world_size=ranks.world_size())
    return ParallelDims(
        tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
        cp=ps.get_context_parallel_world_size(), ep=ps.get_expert_model_parallel_world_size(),
        etp=ps.get_expert_tensor_parallel_world_size(), world_size=ranks.world_size())


def rank_prefix() -> str:
    """'[r3 tp1 pp0 ep1 dp0]' for log lines."""
    if not parallel_state.model_parallel_is_initialized():
        return f"[r{os.environ.get('RANK', 0)}]"
    ps = parallel_state
    return (f"[r{dist.get_rank()} tp{ps.get_tensor_model_parallel_rank()} "
            f"pp{ps.get_pipeline_model_parallel_rank()} ep{ps.get_expert_model_parallel_rank()} "
            f"dp{ps.get_data_parallel_rank()}]")
