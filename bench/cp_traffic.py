"""CP traffic and memory: halo exchange vs all-gather for sliding-window layers (issue 13 item 3).

One forward + backward of a K-EXAONE-shaped attention stack (the `LLLG` pattern: 3 sliding-window
layers of W=128, then a global one; K-EXAONE's heads per TP rank under TP4: 16 query heads, 2 KV
heads, head_dim 128) on `cp` gloo processes, run twice in the same processes: with the halo
exchange (`LocalCoreAttention.halo_exchange = True`, what training runs) and with every layer
all-gathering K/V (`halo_exchange = False`, the path before issue 13). Each layer is q/k/v
projections -> `LocalCoreAttention` (blockwise, CP) -> output projection + residual.

Measured, not computed from shapes:
- bytes: a TorchDispatchMode sees every `c10d::` operator (every torch.distributed call,
  megatron's all-gather and reduce-scatter as well as our isend/irecv) and counts, per rank,
  the bytes that arrive from other ranks: a recv's buffer, an all-gather's output minus this
  rank's own input, a reduce-scatter's input minus its own output. Cross-checked against
  `halo.BYTES_SENT` (what our exchange functions record sending).
- peak memory: glibc's in-use heap (`mallinfo2`: arena chunks in use + mmapped blocks), read
  after every operator of the forward and backward, minus the value before the forward (inputs
  and weights exist already). torch's CPU allocator is glibc malloc, so this is every tensor,
  autograd's saved ones and gloo's buffers included; it misses only what lives inside one op.
  Both paths run once unmeasured first on 512 local tokens (first-call allocations, gloo's
  connections).
The two runs must agree (output and input gradient, max |diff| printed).

The `L` stack (one sliding layer alone, in the same processes) separates what the halo saves
on a sliding layer from the global layer's all-gather, which both runs of `LLLG` share.

Run: `python bench/cp_traffic.py [--seq 4096] [--cps 2 4] [--window 128]` from the repo root.
Prints per-rank maxima and the halo / all-gather ratios of one run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class _MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo


def heap_in_use() -> int:
    """Bytes glibc malloc has handed out and not had back (arena chunks + mmapped blocks)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


def _nbytes(tensors) -> int:
    from torch.utils._pytree import tree_leaves

    return sum(t.numel() * t.element_size() for t in tree_leaves(tensors)
               if isinstance(t, torch.Tensor))


class TrafficAndPeak(TorchDispatchMode):
    """Bytes received per c10d operator and the heap's peak above its value at entry."""

    def __init__(self) -> None:
        super().__init__()
        self.received: Counter = Counter()
        self.base = self.peak = 0

    def __enter__(self):
        self.base = self.peak = heap_in_use()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            self.received[func.__name__] += _arrived(func.__name__, args)
        out = func(*args, **kwargs)
        self.peak = max(self.peak, heap_in_use())
        return out

    @property
    def peak_bytes(self) -> int:
        return self.peak - self.base


def _arrived(name: str, args) -> int:
    """Bytes a c10d operator brings to this rank from the others (from its tensor arguments)."""
    if name.startswith("recv"):
        return _nbytes(args[0])
    if name.startswith("_allgather_base"):  # (output, input, ...)
        return _nbytes(args[0]) - _nbytes(args[1])
    if name.startswith("_reduce_scatter_base"):  # (output, input, ...)
        return _nbytes(args[1]) - _nbytes(args[0])
    if name.startswith(("send", "barrier")):
        return 0
    raise NotImplementedError(f"bench/cp_traffic.py does not count c10d::{name}")


def _stack(args, pattern: str, cp_group):
    """Attention layers (L sliding, G global) with K-EXAONE's per-TP-rank head shapes."""
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from exaone_train.model.layers import LocalCoreAttention

    hidden = args.heads * args.head_dim
    config = TransformerConfig(num_layers=len(pattern), hidden_size=hidden,
                               num_attention_heads=args.heads,
                               num_query_groups=args.kv_heads, kv_channels=args.head_dim,
                               window_size=(args.window - 1, 0),
                               window_attn_skip_freq=[int(c == "L") for c in pattern],
                               attention_dropout=0.0, use_cpu_initialization=True)
    torch.manual_seed(0)
    kv = args.kv_heads * args.head_dim
    layers = []
    for number in range(1, len(pattern) + 1):  # megatron numbers layers from 1
        proj = torch.nn.ModuleDict({"q": torch.nn.Linear(hidden, hidden, bias=False),
                                    "k": torch.nn.Linear(hidden, kv, bias=False),
                                    "v": torch.nn.Linear(hidden, kv, bias=False),
                                    "o": torch.nn.Linear(hidden, hidden, bias=False)})
        core = LocalCoreAttention(config, number, AttnMaskType.causal,
                                  pg_collection=argparse.Namespace(cp=cp_group))
        layers.append((proj, core))
    return layers


def _forward(layers, x, args):
    s, b = x.shape[:2]
    for proj, core in layers:
        q = proj["q"](x).view(s, b, args.heads, args.head_dim)
        k = proj["k"](x).view(s, b, args.kv_heads, args.head_dim)
        v = proj["v"](x).view(s, b, args.kv_heads, args.head_dim)
        x = x + proj["o"](core(q, k, v, None))
    return x


def _one_pass(layers, x_local, args, halo: bool) -> dict:
    from exaone_train.model.layers import LocalCoreAttention
    from exaone_train.parallel.halo import BYTES_SENT

    LocalCoreAttention.halo_exchange = halo
    BYTES_SENT.clear()
    x = x_local.clone().requires_grad_()
    with TrafficAndPeak() as meter:
        out = _forward(layers, x, args)
        out.backward(torch.ones_like(out))
    return {"received": dict(meter.received), "peak": meter.peak_bytes,
            "recorded_sent": dict(BYTES_SENT), "out": out.detach(), "grad": x.grad}


def measure(args) -> dict:
    """On each CP rank, per stack pattern: the halo pass, the all-gather pass, their agreement."""
    from megatron.core import parallel_state

    from exaone_train.config.schema import ParallelConfig
    from exaone_train.parallel import state
    from exaone_train.parallel.context import slice_for_cp_rank

    cp = torch.distributed.get_world_size()
    state.init_model_parallel(ParallelConfig(cp=cp), seed=1)
    group = parallel_state.get_context_parallel_group()
    x = torch.randn(args.seq, args.batch, args.heads * args.head_dim,
                    generator=torch.Generator().manual_seed(1)) * 0.1
    x_local = slice_for_cp_rank(x, 0, cp, group.rank())
    del x
    result = {}
    for pattern in args.patterns:
        layers = _stack(args, pattern, group)
        for halo in (True, False):  # warm-up on 2 x 256 local tokens: gloo's connections,
            _one_pass(layers, x_local[:512], args, halo)  # first-call allocations
        runs = {"halo": _one_pass(layers, x_local, args, True),
                "all_gather": _one_pass(layers, x_local, args, False)}
        diff = max(float((runs["halo"][k] - runs["all_gather"][k]).abs().max())
                   for k in ("out", "grad"))
        for run in runs.values():
            del run["out"], run["grad"]
        result[pattern] = {"runs": runs, "max_diff": diff}
    return result


def _report(cp: int, pattern: str, per_rank: list[dict]) -> None:
    rows = {}
    for mode in ("halo", "all_gather"):
        runs = [r[pattern]["runs"][mode] for r in per_rank]
        received = [sum(r["received"].values()) for r in runs]
        recorded = [sum(r["recorded_sent"].values()) for r in runs]
        ops = sorted({op for r in runs for op in r["received"] if r["received"][op]})
        rows[mode] = (sum(received), max(r["peak"] for r in runs))
        print(f"{pattern} cp={cp} {mode:>10}: received {sum(received) / 2**20:9.2f} MiB over all ranks "
              f"(max per rank {max(received) / 2**20:.2f}; our counter: sent "
              f"{sum(recorded) / 2**20:.2f}), peak {rows[mode][1] / 2**20:8.1f} MiB per rank "
              f"(max), ops {ops}")
    diff = max(r[pattern]["max_diff"] for r in per_rank)
    traffic = rows["halo"][0] / rows["all_gather"][0]
    memory = rows["halo"][1] / rows["all_gather"][1]
    print(f"{pattern} cp={cp} halo / all-gather: traffic {traffic:.4f} ({1 / traffic:.1f}x "
          f"less), peak memory {memory:.3f} ({1 / memory:.2f}x less); outputs and grads agree "
          f"to {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=4096, help="global sequence length (tokens)")
    parser.add_argument("--cps", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16, help="query heads per TP rank")
    parser.add_argument("--kv-heads", type=int, default=2, help="KV heads per TP rank")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--patterns", nargs="+", default=["LLLG", "L"],
                        help="layer stacks (L sliding, G global); LLLG is K-EXAONE's, L shows "
                             "one sliding layer alone")
    args = parser.parse_args()
    from exaone_train.parallel.testing import run_distributed

    print(f"stacks {args.patterns}, seq {args.seq}, window {args.window}, {args.heads} heads / "
          f"{args.kv_heads} KV heads x {args.head_dim}, batch {args.batch}, fp32, gloo")
    for cp in args.cps:
        per_rank = run_distributed(measure, cp, args, timeout_s=3600)
        for pattern in args.patterns:
            _report(cp, pattern, per_rank)


if __name__ == "__main__":
    main()
