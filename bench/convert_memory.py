"""Peak host memory of `convert from-hf` / `to-hf`: streaming (today's) vs in-memory (before).

A random K-EXAONE-shaped HF model (transformers' own `save_pretrained`, sharded safetensors +
index) is converted HF -> checkpoint -> HF in a fresh process per path. Each process first
converts a tiny model both ways (imports, megatron's one-time set-up), then, per direction,
resets its peak RSS (`/proc/self/clear_refs`), converts, and reports the growth of the peak
over the RSS before (`VmHWM` - `VmRSS`, Linux). Printed: peak growth / model bytes for each
path and direction, and in-memory / streaming. The streaming outputs are checked bitwise
against the in-memory ones (HF tensors) before a ratio is printed.

Run: `python bench/convert_memory.py [--experts 32] [--layers 4] [--stream-only]` from the repo
root. The peaks of RssAnon and RssFile (sampled every 5 ms) split the growth into heap and
mapped file pages.
`worker` is also what tests/unit/test_convert_stream.py runs in its subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def big_hf_config(layers: int = 5, experts: int = 32) -> Any:
    """ExaoneMoe shaped like K-EXAONE, many mid-sized tensors (about 350 MB fp32 at the
    defaults): hidden 768, vocab 2000 (padded to 2048), a dense first layer (ffn 1024), MoE
    layers of `experts` experts of 256 and a shared expert. The largest tensors (the dense
    fc1, the embedding and output layer) are ~6.3 MB."""
    from exaone_train.export import tiny

    return tiny.kexaone_config(hidden_size=768, num_attention_heads=6, num_key_value_heads=2,
                               head_dim=128, intermediate_size=1024, moe_intermediate_size=256,
                               num_experts=experts, num_hidden_layers=layers, vocab_size=2000)


def make_hf_dir(out: Path, layers: int = 5, experts: int = 32) -> int:
    """A random HF model in `out` (1e8-byte safetensors shards + index); returns its bytes."""
    from exaone_train.export import tiny

    model = tiny.build_hf_model(big_hf_config(layers, experts))
    model.save_pretrained(str(out), max_shard_size=100_000_000)
    return sum(f.stat().st_size for f in out.glob("*.safetensors"))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class _RssSampler:
    """The peaks of RssAnon (heap, tensors) and RssFile (mapped file pages, e.g. safetensors
    read through mmap) over the values at the start, read every `period_s` from a thread: the
    kernel keeps a peak of the total only (VmHWM), so the split is sampled (a short spike
    between two reads is missed)."""

    def __init__(self, period_s: float = 0.005) -> None:
        import threading

        self.period_s, self.stop = period_s, threading.Event()
        self.start = {f: _status_kib(f) for f in ("RssAnon", "RssFile")}
        self.peak = dict(self.start)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            for f in self.peak:
                self.peak[f] = max(self.peak[f], _status_kib(f))

    def growth(self) -> dict[str, int]:
        self.stop.set()
        self.thread.join()
        return {f"{f.lower()}_peak": (self.peak[f] - self.start[f]) * 1024 for f in self.peak}


def _peak_growth(fn: Any) -> dict[str, int]:
    """Bytes the peak RSS grew over the RSS before, while `fn()` ran (`total`), and the sampled
    peak growth of its anonymous and file-backed parts (`rssanon_peak`, `rssfile_peak`)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS: a true "before"
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    sampler = _RssSampler()
    try:
        fn()
    finally:
        parts = sampler.growth()
    return {"total": (_status_kib("VmHWM") - before) * 1024, **parts}


def worker(hf_dir: str, out_dir: str, mode: str) -> dict:
    """In this (fresh) process: warm up on a tiny model, then convert `hf_dir` -> checkpoint ->
    HF under `out_dir` by `mode` ("stream" or "memory"); peak RSS growth per direction."""
    from exaone_train.export import convert, tiny
    from exaone_train.parallel import state

    to_ckpt = convert.convert_from_hf if mode == "stream" else convert.convert_from_hf_in_memory
    to_hf = convert.convert_to_hf if mode == "stream" else convert.convert_to_hf_in_memory
    out = Path(out_dir)
    tiny_hf = tiny.save_hf_model(tiny.build_hf_model(tiny.kexaone_config()), out / "warm_hf")

    def run(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        finally:
            state.teardown()

    run(to_ckpt, tiny_hf, out / "warm_ckpt")
    run(to_hf, out / "warm_ckpt", out / "warm_out")
    return {"from_hf": _peak_growth(lambda: run(to_ckpt, hf_dir, out / "ckpt")),
            "to_hf": _peak_growth(lambda: run(to_hf, out / "ckpt", out / "hf"))}


def run_worker(hf_dir: Path, out_dir: Path, mode: str) -> dict:
    """`worker` in a fresh process (megatron keeps globals; a clean peak)."""
    from exaone_train.parallel.ranks import env_without_rendezvous

    # not the caller's rendezvous variables: a test process that ran an in-process group
    # still has them (and maybe the port): the worker would fail with EADDRINUSE
    env = env_without_rendezvous(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                                 TORCHDYNAMO_DISABLE="1")
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from bench.convert_memory import worker; "
            f"print('RESULT', json.dumps(worker({str(hf_dir)!r}, {str(out_dir)!r}, {mode!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def hf_tensors_equal(a: Path, b: Path) -> bool:
    """The two HF directories hold the same tensor names, dtypes and values (bitwise)."""
    from exaone_train.export.hf_io import HfTensorFiles

    fa, fb = HfTensorFiles(a), HfTensorFiles(b)
    if sorted(fa.meta) != sorted(fb.meta):
        return False
    for key in fa.meta:
        ta, tb = fa.load(key), fb.load(key)
        if ta.dtype != tb.dtype or not ta.equal(tb):
            return False
    return True


def _mb(growth: dict[str, int], model_bytes: int) -> str:
    return (f"{growth['total'] / 1e6:.0f} MB ({growth['total'] / model_bytes:.2f}x model; anon "
            f"{growth['rssanon_peak'] / 1e6:.0f}, file {growth['rssfile_peak'] / 1e6:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--stream-only", action="store_true",
                    help="measure only the streaming path (its output checked bitwise against "
                         "the input model), e.g. to see how its peak grows with the model")
    args = ap.parse_args()
    modes = ("stream",) if args.stream_only else ("memory", "stream")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model_bytes = make_hf_dir(tmp / "hf", args.layers, args.experts)
        got = {mode: run_worker(tmp / "hf", tmp / mode, mode) for mode in modes}
        reference = tmp / "hf" if args.stream_only else tmp / "memory" / "hf"
        if not hf_tensors_equal(reference, tmp / "stream" / "hf"):
            raise SystemExit(f"streaming output differs from {reference.name}: no figures")
    print(f"model: {model_bytes / 1e6:.1f} MB of HF safetensors (fp32), "
          f"{args.layers} layers, {args.experts} experts")
    print("peak RSS growth (anon / file: sampled peaks of RssAnon / RssFile, MB)")
    if args.stream_only:
        print("| direction | streaming |\n|---|---:|")
        for direction in ("from_hf", "to_hf"):
            print(f"| {direction} | {_mb(got['stream'][direction], model_bytes)} |")
        return
    print("| direction | in-memory | streaming | in-memory / streaming |\n|---|---:|---:|---:|")
    for direction in ("from_hf", "to_hf"):
        mem, stream = got["memory"][direction], got["stream"][direction]
        print(f"| {direction} | {_mb(mem, model_bytes)} | {_mb(stream, model_bytes)} | "
              f"{mem['total'] / max(stream['total'], 1):.1f}x |")


if __name__ == "__main__":
    main()
