"""Let megatron-core run on a machine without CUDA (CPU + gloo), for tests and the demo.

megatron-core 0.16.1 assumes CUDA in a handful of places. Each patch below names the place and
why it is needed. `install()` is a no-op when CUDA is available: on a GPU node nothing here is
active. The patches change *where* tensors live and which collectives are used, never the math:
the same model code, schedules and collectives run as on GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)
_INSTALLED = False


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int):  # torch reads a bare int as a CUDA ordinal
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """megatron-core creates many tensors with `device="cuda"` or
    `device=torch.cuda.current_device()` (buffers, masks, dummy overflow flags) and moves others
    with `.cuda()`/`.to("cuda")`. On CPU those must land on the CPU instead. Some are staged in
    pinned host memory first (RoPE's context-parallel slice: `pin_memory=True`), which needs a
    CUDA host allocator: on CPU they are ordinary tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _DummyStream:
    """Streams and events order GPU work; on CPU every op is already synchronous."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None: ...
    def wait_event(self, *args: Any) -> None: ...
    def record_event(self, *args: Any) -> _DummyStream:
        return _DummyStream()
    def record(self, *args: Any) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True
    def elapsed_time(self, other: Any) -> float:
        return 0.0


@contextlib.contextmanager
def _null_stream_ctx(*args: Any, **kwargs: Any):
    yield


def _patch_torch_cuda() -> None:
    # parallel_state, DDP buffers and the schedules call current_device(), streams, events and
    # synchronize() unconditionally. current_device() answers the CPU device itself (not an
    # ordinal for _CudaToCpuMode to map): autograd runs custom backward functions (e.g. the MoE
    # all-to-all) outside the mode, and they allocate with `device=current_device()`.
    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment]
    torch.cuda.set_device = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.device_count = lambda: 0  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.Stream = _DummyStream  # type: ignore[assignment,misc]
    torch.cuda.Event = _DummyStream  # type: ignore[assignment,misc]
    torch.cuda.current_stream = lambda *a, **k: _DummyStream()  # type: ignore[assignment]
    torch.cuda.default_stream = lambda *a, **k: _DummyStream()  # type: ignore[assignment]
    torch.cuda.stream = _null_stream_ctx  # type: ignore[assignment]
    torch.cuda.nvtx.range_push = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.nvtx.range_pop = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.memory_allocated = lambda *a, **k: 0  # type: ignore[assignment]
    torch.cuda.max_memory_allocated = lambda *a, **k: 0  # type: ignore[assignment]
    torch.cuda.empty_cache = lambda *a, **k: None  # type: ignore[assignment]
    # The CUDA RNG state (tensor_parallel's RNG tracker forks it for dropout and init): use the
    # CPU generator, so `fork()` still swaps a real state and init stays reproducible.
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()  # type: ignore[assignment]
    torch.cuda.set_rng_state = lambda s, *a, **k: torch.set_rng_state(s)  # type: ignore[assignment]
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state  # type: ignore[assignment]
    torch.cuda.random.set_rng_state = torch.cuda.set_rng_state  # type: ignore[assignment]
    # (the CPU default generator directly: torch.manual_seed itself calls manual_seed_all)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))  # type: ignore[assignment]
    torch.cuda.manual_seed_all = lambda seed: None  # type: ignore[assignment]


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    # These helpers reach into torch.cuda.default_generators, which is empty without CUDA.
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def _patch_moe_utils() -> None:
    from megatron.core.transformer.moe import moe_utils

    # The router GEMM checks `te_general_gemm is not None`, but the name is only bound when
    # Transformer Engine imports; without TE it is a NameError.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def _patch_all_to_all() -> None:
    import torch.distributed as dist

    original = dist.all_to_all_single

    # gloo's all_to_all_single only accepts Python lists for split sizes; the MoE alltoall
    # dispatcher passes tensors / numpy arrays.
    @functools.wraps(original)
    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, *a, **k):
        def as_list(sizes):
            return [int(s) for s in sizes.tolist()] if hasattr(sizes, "tolist") else sizes

        return original(output, input, as_list(output_split_sizes), as_list(input_split_sizes),
                        *a, **k)

    dist.all_to_all_single = all_to_all_single


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Same math as megatron-core's version, without its `torch.cuda.FloatTensor` assert."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for p in parameters:
            g = getattr(p, attr, None)
            if g is not None:
                g.detach().mul_(clip_coeff)


def _patch_clip_grads() -> None:
    from megatron.core.optimizer import clip_grads, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu


def _patch_float16_optimizer() -> None:
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params as F16

    original = F16.__init__

    # Float16OptimizerWithFloat16Params sorts parameters into bf16/fp16 (gets an fp32 master
    # copy) and fp32 by `param.type()` in ('torch.cuda.BFloat16Tensor', ...) and raises on any
    # other type, so CPU parameters ('torch.BFloat16Tensor') fail. During its __init__ only,
    # `type()` (no arguments) answers the CUDA name of the same dtype.
    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        real_type = torch.Tensor.type

        def cuda_type_name(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            name = real_type(t, *a, **k)
            if not a and not k and isinstance(name, str) and not name.startswith("torch.cuda."):
                return name.replace("torch.", "torch.cuda.", 1)
            return name

        torch.Tensor.type = cuda_type_name  # type: ignore[method-assign,assignment]
        try:
            original(self, *args, **kwargs)
        finally:
            torch.Tensor.type = real_type  # type: ignore[method-assign]

    F16.__init__ = __init__  # type: ignore[method-assign]


def install() -> bool:
    """Apply the CPU patches once. Returns True when they are active (no CUDA here)."""
    global _INSTALLED
    if torch.cuda.is_available():
        return False
    if _INSTALLED:
        return True
    _patch_torch_cuda()
    _patch_rng_tracker()
    _patch_moe_utils()
    _patch_all_to_all()
    _patch_clip_grads()
    _patch_float16_optimizer()
    # Enter the mode for the life of the process: megatron-core builds CUDA tensors lazily
    # (during forward, in the schedules) so a narrower scope would miss some.
    _CudaToCpuMode().__enter__()
    _INSTALLED = True
    log.info("CPU support for megatron-core installed (no CUDA on this machine)")
    return True
