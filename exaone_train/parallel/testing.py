"""`run_distributed(fn, world_size, *args)`: run `fn(*args)` on N gloo processes (spawned) and
return each rank's result. Used by tests/dist; after OLMo-core's run_distributed_test.

`fn` must be importable (a module-level function). Each process has torch.distributed
initialised (gloo, CPU support installed) before `fn` runs, and torn down after.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue) -> None:
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


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 600) -> list:
    from exaone_train.parallel.state import _free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue))
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
