"""`run_distributed(fn, world_size, *args)`: run `fn(*args)` on N gloo processes (spawned) and
return each rank's result. Used by tests/dist; after OLMo-core's run_distributed_test.

`fn` must be importable (a module-level function). Each process has torch.distributed
initialised (gloo, CPU support installed) before `fn` runs, and torn down after.

On the CPU the ranks are forked from one forkserver that imported torch, megatron-core and the
trainer once (`PRELOAD`): a rank then starts in a fraction of a second instead of importing
them again (seconds per rank on 2 cores, for each of the suite's dozens of ranks). The server
holds none of the test process's state (it starts from a clean interpreter); each rank gets
sys.path and the working directory as under spawn, and the caller's os.environ as it is at the
call. `gpus=True` spawns (each rank a fresh interpreter, its own CUDA context).

The processes never see a GPU unless the test asks (`gpus=True`): on a machine with CUDA,
`init_distributed` would otherwise pick NCCL and `cuda:LOCAL_RANK` for each rank, and a
2-4 process test fails on a one-GPU machine. `gpus=True` gives rank r GPU r (NCCL) and needs
at least `world_size` GPUs.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

PRELOAD = ["exaone_train.parallel.state", "exaone_train.config.load",
           "exaone_train.train.trainer", "exaone_train.checkpoint.model_state"]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue,
            env: dict[str, str]) -> None:
    os.environ.clear()  # the caller's environment, not the forkserver's
    os.environ.update(env)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from exaone_train.parallel import state

    try:
        state.init_distributed(timeout_minutes=5)
        result = fn(*args)
        queue.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - reported to the parent with the traceback
        queue.put((rank, False, traceback.format_exc()))
    finally:
        state.teardown()


@contextlib.contextmanager
def _children_see_no_gpu(hide: bool):
    """CUDA_VISIBLE_DEVICES="" in the environment the spawned processes start with (each
    starts a fresh interpreter that copies os.environ at start); restored right after."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hide:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if hide:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
            if saved is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _check_gpus(world_size: int) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < world_size:
        raise RuntimeError(f"run_distributed(gpus=True) needs {world_size} GPUs, "
                           f"this machine has {count}")


def _context(gpus: bool):
    if gpus:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 600,
                    gpus: bool = False) -> list:
    """`fn(*args)` on `world_size` spawned ranks: gloo on the CPU, or NCCL with one GPU per
    rank when `gpus` (see the module doc). Returns each rank's result, rank order."""
    from exaone_train.parallel.state import _free_port

    if gpus:
        _check_gpus(world_size)
    ctx = _context(gpus)
    queue = ctx.Queue()
    port = _free_port()
    with _children_see_no_gpu(hide=not gpus):
        env = dict(os.environ)
        procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue, env))
                 for r in range(world_size)]
        for p in procs:
            p.start()
    results: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, ok, value = queue.get(timeout=timeout_s)
            (results.__setitem__(rank, value) if ok else errors.append(f"rank {rank}:\n{value}"))
            if errors:
                break
    finally:
        for p in procs:
            p.join(timeout=10 if not errors else 1)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("distributed test failed\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]


class DeviceRecorder(TorchDispatchMode):
    """Records the device of every tensor handed to a torch.distributed collective and to the
    forward of `modules` (and of their parameters and buffers), for tests that assert all of
    them are on `state.device()`.

    Collectives are seen at the dispatcher: every torch.distributed call (all_reduce,
    broadcast, all_gather, reduce_scatter, all_to_all, send/recv, barrier, the object
    collectives' staging tensors), megatron's and ours alike, runs a `c10d::` operator, so none
    is missed by where it was imported from. Use as a context manager; read `misplaced()`."""

    def __init__(self, modules: list) -> None:
        super().__init__()
        self.modules = modules
        self.collectives: list[tuple[str, torch.device]] = []
        self.forwards: list[tuple[str, torch.device]] = []
        self.state: list[tuple[str, torch.device]] = []
        self.forward_calls = 0
        self._handles: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            self.collectives += [(str(func), t.device) for t in _tensors((args, kwargs))]
        return func(*args, **kwargs)

    def _forward_hook(self, name: str):
        def hook(module, args, kwargs):
            self.forward_calls += 1
            self.forwards.extend((name, t.device) for t in _tensors((args, kwargs)))
        return hook

    def __enter__(self):
        for i, m in enumerate(self.modules):
            self.state += [(f"{i}.{n}", t.device) for n, t in
                           [*m.named_parameters(), *m.named_buffers()]]
            self._handles.append(m.register_forward_pre_hook(self._forward_hook(f"chunk{i}"),
                                                             with_kwargs=True))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def misplaced(self, device: torch.device) -> list[tuple[str, str, torch.device]]:
        """(kind, name, device) of every recorded tensor not on `device`."""
        return [(kind, name, d) for kind, rows in (("collective", self.collectives),
                                                   ("forward", self.forwards),
                                                   ("model", self.state))
                for name, d in rows if d != device]


def _tensors(tree: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]
