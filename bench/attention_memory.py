"""Peak memory and time of ONE K-EXAONE attention layer's forward+backward on CPU: the old
dense local attention vs the blockwise one, sliding-window (W=128) and global layers apart.

Shapes: the core attention of `kexaone_236b` under TP4 (64/4 = 16 query heads, 8/4 = 2 KV
heads, head dim 128; layer 1 sliding window 128, layer 4 global), batch 1, one document per
sample (document ids passed, as the trainer does with `train.document_attention_mask`).
Inputs are fp32 (this CPU has no bf16 matmul units; the blockwise path computes in fp32
whatever the input dtype, and the dense scores were fp32 in either case).

- old: the dense local attention as it was before the blockwise commit (9e8b78d^,
  `LocalCoreAttention.forward`, reconstructed below line for line): K/V repeated to every
  query head, fp32 scores [b, h, s, s], masked copy, softmax, probabilities; plus the
  [b, 1, s, s] bool document mask `step.collate` then built per micro-batch (counted: it was
  held for the step).
- new: today's `LocalCoreAttention` (blockwise, `exaone_train.model.blockwise`), document ids.

Peak memory: each point runs in a fresh process (no allocator state or cached blocks carried
over), with torch.profiler's `profile_memory` recording every CPU tensor allocation and free
of the forward+backward; the peak of the running sum is the peak of live tensor bytes above
what existed before the forward (inputs and the output gradient). That is what the allocator
handed out, exact, not an RSS estimate; the process's max-RSS growth is printed beside it as
a cross-check (it also sees allocator slack). Saved-for-backward bytes come from
`torch.autograd.graph.saved_tensors_hooks` during the forward (distinct storages, the input
q/k/v excluded: in a real layer they are the post-RoPE activations the planner already counts),
per query token: the measured constant the planner's formula is checked against
(`launcher.resource_plan.blockwise_saved_bytes_per_token`). The old 16K point would hold ~50 GB: it
is extrapolated (c * s^2 fitted to the measured 4K point) and marked so, unless --dense-max-gib
allows it.

Run: `python bench/attention_memory.py [--seqs 1024 4096 16384] [--kinds sliding global]`
from the repo root. Prints a table and ratios measured in this run; exits 0 (a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

TP = 4
BATCH = 1
MIB = 1024**2
OLD_BYTES_PER_SCORE_GUESS = 16  # only to decide whether a dense point is run or extrapolated


def recipe():
    from launcher.resource_plan import load_for_plan

    return load_for_plan("kexaone_236b", ["precision=fp32", "precision.transformer_impl=local",
                                          f"parallel.tp={TP}"])


def attention_module(kind: str):
    """K-EXAONE's LocalCoreAttention for its first layer of `kind` (sliding | global)."""
    from exaone_train.model.builder import transformer_config
    from exaone_train.model.layers import LocalCoreAttention
    from exaone_train.model.layout import SLIDING, layer_types

    cfg = recipe()
    config = transformer_config(cfg.model, cfg.parallel, cfg.precision)
    want = SLIDING if kind == "sliding" else "full_attention"
    number = layer_types(cfg.model).index(want) + 1
    attn = LocalCoreAttention(config, layer_number=number, attn_mask_type=None)
    assert (attn.window_left is not None) == (kind == "sliding"), (kind, attn.window_left)
    return attn, cfg.model


def old_dense(attn, query, key, value, mask):
    """The pre-blockwise LocalCoreAttention.forward (9e8b78d^), CP = 1, `mask` [b,1,s,s]."""
    import torch

    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    i = torch.arange(q.shape[2]).unsqueeze(1)
    j = torch.arange(k.shape[2]).unsqueeze(0)
    allowed = j <= i
    if attn.window_left is not None:
        allowed = allowed & (j >= i - attn.window_left)
    allowed = allowed & ~mask.bool()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.softmax_scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    context = torch.matmul(probs, v)
    b, h, s, d = context.shape
    return context.permute(2, 0, 1, 3).reshape(s, b, h * d)


def _peak_bytes(prof) -> int:
    """Peak of the running sum of CPU allocations minus frees recorded by the profiler."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward, except `excluded`'s."""

    def __init__(self, excluded) -> None:
        self.excluded = {t.untyped_storage().data_ptr() for t in excluded}
        self.storages: dict[int, int] = {}

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.excluded:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def inputs(m, seq: int, dtype):
    """q [s, b, 16, 128], k/v [s, b, 2, 128] (TP4 shards), one document, output gradient."""
    import torch

    torch.manual_seed(0)
    heads, groups, d = m.num_attention_heads // TP, m.num_query_groups // TP, m.head_dim
    q = torch.randn(seq, BATCH, heads, d, dtype=dtype, requires_grad=True)
    k = torch.randn(seq, BATCH, groups, d, dtype=dtype, requires_grad=True)
    v = torch.randn(seq, BATCH, groups, d, dtype=dtype, requires_grad=True)
    docs = torch.zeros(BATCH, seq, dtype=torch.int32)
    grad = torch.randn(seq, BATCH, heads * d, dtype=dtype)
    return q, k, v, docs, grad


def run_point(path: str, kind: str, seq: int, dtype_name: str = "fp32") -> dict:
    """One forward+backward in this process: peak bytes, saved bytes, seconds."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    attn, m = attention_module(kind)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    q, k, v, docs, grad = inputs(m, seq, dtype)
    saved = SavedBytes([q, k, v])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            if path == "old":  # step.collate's [b, 1, s, s] mask, built per micro-batch
                mask = (docs.unsqueeze(2) != docs.unsqueeze(1)).unsqueeze(1)
                out = old_dense(attn, q, k, v, mask)
            else:
                out = attn(q, k, v, docs)
        forward_s = time.perf_counter() - start
        out.backward(grad)
        seconds = time.perf_counter() - start
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    return {"path": path, "kind": kind, "seq": seq, "dtype": dtype_name,
            "peak_bytes": _peak_bytes(prof), "rss_growth_bytes": rss_growth,
            "saved_bytes": saved.total, "saved_bytes_per_token": saved.total / (seq * BATCH),
            "forward_s": forward_s, "seconds": seconds, "measured": True}


def point_in_fresh_process(path: str, kind: str, seq: int, dtype: str = "fp32") -> dict:
    cmd = [sys.executable, __file__, "--point", path, kind, str(seq), dtype]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"point {path} {kind} {seq} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def extrapolated_old(measured: dict, seq: int) -> dict:
    """The old path at `seq` from its largest measured point, scaled as s^2 (its memory is
    the [s, s] scores, probabilities and mask) and its time as s^2 likewise."""
    f = (seq / measured["seq"]) ** 2
    return {**measured, "seq": seq, "peak_bytes": measured["peak_bytes"] * f,
            "rss_growth_bytes": float("nan"), "saved_bytes": measured["saved_bytes"] * f,
            "saved_bytes_per_token": measured["saved_bytes_per_token"] * seq / measured["seq"],
            "forward_s": measured["forward_s"] * f, "seconds": measured["seconds"] * f,
            "measured": False}


def _old_fits(seq: int, dense_max_gib: float) -> bool:
    heads = 16
    return OLD_BYTES_PER_SCORE_GUESS * heads * seq * seq * BATCH <= dense_max_gib * 1024**3


def sweep(seqs: list[int], kinds: list[str], dense_max_gib: float) -> list[dict]:
    rows = []
    for kind in kinds:
        last_old = None
        for seq in seqs:
            for path in ("old", "new"):
                if path == "old" and not _old_fits(seq, dense_max_gib):
                    rows.append(extrapolated_old(last_old, seq))
                    continue
                row = point_in_fresh_process(path, kind, seq)
                last_old = row if path == "old" else last_old
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _line(r: dict) -> str:
    mark = "" if r["measured"] else "  (extrapolated s^2, not run)"
    return (f"{r['kind']:8s} {r['path']:4s} seq {r['seq']:6d}: peak {r['peak_bytes'] / MIB:10.1f} MiB"
            f" (max-RSS growth {r['rss_growth_bytes'] / MIB:8.1f} MiB), saved "
            f"{r['saved_bytes_per_token']:10.0f} B/token, {r['seconds']:8.2f} s{mark}")


def planned_peak(kind: str, seq: int, e: int = 4) -> float:
    """The planner's forecast of the new path's peak above the inputs (CP 1): the saved fp32
    output + LSE, the layer's output, one backward's working set."""
    from launcher.resource_plan import blockwise_saved_bytes_per_token, blockwise_working_bytes

    _, m = attention_module(kind)
    output = e * m.num_attention_heads / TP * m.head_dim * seq
    saved = blockwise_saved_bytes_per_token(m, TP, e) * seq
    return BATCH * (saved + output + blockwise_working_bytes(m, TP, e, seq, seq))


def ratios(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["path"] == "new":
            plan = planned_peak(r["kind"], r["seq"])
            out.append(f"{r['kind']:8s} seq {r['seq']:6d}: new measured peak / planner forecast "
                       f"{r['peak_bytes'] / plan:.3f} ({r['peak_bytes'] / MIB:.1f} / "
                       f"{plan / MIB:.1f} MiB)")
    by = {(r["kind"], r["path"], r["seq"]): r for r in rows}
    for (kind, path, seq), new in sorted(by.items()):
        old = by.get((kind, "old", seq))
        if path != "new" or old is None:
            continue
        tag = "" if old["measured"] else " (old extrapolated)"
        out.append(f"{kind:8s} seq {seq:6d}: old/new peak memory {old['peak_bytes'] / new['peak_bytes']:8.1f}x,"
                   f" old/new time {old['seconds'] / new['seconds']:6.2f}x{tag}")
    for kind in sorted({r["kind"] for r in rows}):
        new = sorted((r for r in rows if r["kind"] == kind and r["path"] == "new"),
                     key=lambda r: r["seq"])
        for a, b in zip(new, new[1:], strict=False):
            out.append(f"{kind:8s} new: seq x{b['seq'] / a['seq']:.0f} -> peak memory "
                       f"x{b['peak_bytes'] / a['peak_bytes']:.2f}, time x{b['seconds'] / a['seconds']:.2f}")
    return out


def saved_constants(seq: int) -> list[str]:
    """Measured blockwise saved bytes per query token (beyond q/k/v) vs the planner's."""
    from launcher.resource_plan import blockwise_saved_bytes_per_token

    _, m = attention_module("sliding")
    out = []
    for dtype, e in (("fp32", 4), ("bf16", 2)):
        r = point_in_fresh_process("new", "sliding", seq, dtype)
        planned = blockwise_saved_bytes_per_token(m, TP, e)
        out.append(f"blockwise saved for backward beyond q/k/v, {dtype}: measured "
                   f"{r['saved_bytes_per_token']:.0f} B/token, planner {planned:.0f} B/token")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--kinds", nargs="+", default=["sliding", "global"],
                    choices=["sliding", "global"])
    ap.add_argument("--dense-max-gib", type=float, default=6.0,
                    help="run an old (dense) point only if it needs about this much or less")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--point", nargs=4, metavar=("PATH", "KIND", "SEQ", "DTYPE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(run_point(args.point[0], args.point[1], int(args.point[2]),
                                   args.point[3])))
        return []
    rows = sweep(args.seqs, args.kinds, args.dense_max_gib)
    print("\n".join(["", *map(_line, rows), "", *ratios(rows), "",
                     *saved_constants(min(args.seqs))]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
