"""What benchmark decontamination (`build.decontaminate`) costs a data build, in one run.

The shipped corpus (x `--copies`) is built twice per repeat, alternating: without
decontamination and with a 13-gram check against an evaluation set of `--eval-texts` texts
(the first 60 words of every k-th corpus document, so the planted contamination is known: at
least those documents must be flagged). `action: mark`, so both builds tokenize and write the
same documents and the difference is the check itself. Prints CPU seconds of the build process
(all threads: steadier than wall time on a shared machine) and wall seconds, best of
`--repeats`, their ratios, and the documents flagged.

Run: `python bench/data_decontam.py [--copies 1] [--eval-texts 1000] [--repeats 2]` from the
repo root.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKENIZER = ROOT / "data" / "tokenizer" / "tokenizer.json"


def make_inputs(tmp: Path, copies: int, eval_texts: int) -> tuple[Path, Path, int]:
    """(corpus jsonl, eval jsonl, documents the eval texts were taken from)."""
    blob = b"".join(p.read_bytes() for p in sorted((ROOT / "data" / "corpus").glob("*.jsonl")))
    corpus = tmp / "corpus.jsonl"
    corpus.write_bytes(blob * copies)
    docs = blob.decode().splitlines()
    step = max(1, len(docs) // eval_texts)
    picked = [json.loads(x)["text"] for x in docs[::step]][:eval_texts]
    ev = tmp / "eval.jsonl"
    ev.write_text("".join(json.dumps({"text": " ".join(t.split()[:60])}, ensure_ascii=False)
                          + "\n" for t in picked), encoding="utf-8")
    return corpus, ev, len(picked)


def run(corpus: Path, ev: Path | None, out: Path) -> tuple[float, dict]:
    from data_pipeline.build import build
    from data_pipeline.config import BuildConfig, DecontaminationConfig, SourceConfig

    evals = [SourceConfig(name="eval", path=str(ev))] if ev else []
    cfg = BuildConfig(sources=[SourceConfig(name="corpus", path=str(corpus), language_field="lang")],
                      tokenizer=str(TOKENIZER), output_dir=str(out), num_workers=0, progress=False,
                      decontaminate=DecontaminationConfig(eval_sets=evals, action="mark"))
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = build(cfg)
    return (time.process_time() - c0, time.perf_counter() - t0), manifest


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--eval-texts", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus, ev, planted = make_inputs(tmp, args.copies, args.eval_texts)
        plain, checked = [float("inf")] * 2, [float("inf")] * 2
        for r in range(args.repeats):
            t, m_plain = run(corpus, None, tmp / f"plain{r}")
            plain = [min(a, b) for a, b in zip(plain, t, strict=True)]
            t, m = run(corpus, ev, tmp / f"decon{r}")
            checked = [min(a, b) for a, b in zip(checked, t, strict=True)]
    entry = m["decontamination"]["eval_sets"]["eval"]
    docs = m_plain["totals"]["documents"]
    figures = {"plain_cpu_s": plain[0], "decontaminated_cpu_s": checked[0],
               "ratio_cpu": checked[0] / plain[0], "ratio_wall": checked[1] / plain[1],
               "documents": docs, "flagged": entry["documents_marked"], "planted": planted,
               "eval_ngrams": entry["ngrams"]}
    print(f"corpus: {docs:,} documents, {m_plain['totals']['tokens']:,} tokens; eval set: "
          f"{planted} texts, {entry['ngrams']:,} 13-grams")
    print(f"build without decontamination: {plain[0]:.2f} s CPU, {plain[1]:.2f} s wall; with: "
          f"{checked[0]:.2f} s CPU, {checked[1]:.2f} s wall")
    print(f"flagged {entry['documents_marked']:,} documents (>= {planted * args.copies:,} "
          "planted: the eval texts' own documents)")
    print(f"data_decontam: with/without = {figures['ratio_cpu']:.2f}x build CPU time "
          f"({figures['ratio_wall']:.2f}x wall)")
    return figures


if __name__ == "__main__":
    main()
