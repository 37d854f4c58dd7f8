"""Where a checkpoint stands on the way to retrieval (issue 11, docs/EVAL.md): teacher-forced
accuracy, on freshly generated samples (seeds no build uses), of
- copy: the second listing of same-order recall drills (every token a copy of the first
  listing; format tokens `Ġis` `.` `Ċ` `-` excluded), at short (2-4 pairs, copy distance ~35
  tokens) and long (6-11 pairs, ~100) drills;
- answer: the answer tokens of dense retrieval samples (needles in haystack text) of 240 tokens.
Chance is ~0.01-0.05 for each; an induction (copy) head shows as a jump of `copy` to > 0.5.

    python bench/retrieval_diag.py CHECKPOINT/model [recipe overrides, e.g. model.tie_embeddings=true]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

FORMAT = {"Ġis", ".", "Ċ", "-"}


def _drill_rows(tok, pairs: tuple[int, int], seq: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from data_pipeline.synth.retrieval import recall_drill

    rows, masks = [], []
    for d in recall_drill(999, 20 * n, pairs):
        first, second = d["text"].split("\nAgain:\n")
        if first.split("\n")[1:] != second.split("\n"):
            continue  # shuffled: a lookup, not a copy
        head = tok.encode(first + "\nAgain:\n", add_special_tokens=False).ids
        ids = tok.encode(d["text"], add_special_tokens=False).ids[:seq]
        m = np.zeros(seq, bool)
        m[len(head) + 3:len(ids)] = True  # the first key's first tokens are no copy yet
        for j, t in enumerate(ids):
            if tok.id_to_token(t) in FORMAT:
                m[j] = False
        rows.append(ids + [0] * (seq - len(ids)))
        masks.append(m)
        if len(rows) == n:
            break
    return torch.tensor(rows), torch.tensor(np.array(masks))


def _dense_rows(tok, seq: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    import random

    from data_pipeline.synth.retrieval import dense_sample

    rng = random.Random(4242)
    rows, masks = [], []
    while len(rows) < n:
        d = dense_sample(rng, tok, seq - 16, "en", 4, 2)
        ids = tok.encode(d["text"], add_special_tokens=False).ids
        if len(ids) > seq:
            continue
        m = np.zeros(seq, bool)
        for v in d["values"]:  # mark the answer tokens: after each "Answer:"
            vt = tok.encode(" " + v, add_special_tokens=False).ids
            for j in range(len(ids) - len(vt), 0, -1):
                if ids[j:j + len(vt)] == vt and tok.id_to_token(ids[j - 1]) == ":":
                    m[j:j + len(vt)] = True
                    break
        rows.append(ids + [0] * (seq - len(ids)))
        masks.append(m)
    return torch.tensor(rows), torch.tensor(np.array(masks))


def main(argv: list[str]) -> None:
    from data_pipeline.tokenizer import load
    from exaone_train.checkpoint.model_state import load_model_state
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train.trainer import build_model_chunks

    if not argv:  # `make bench` runs every bench script bare: this one needs a checkpoint
        print(__doc__.rstrip().splitlines()[-1].strip() + "\n(no checkpoint given: nothing measured)")
        return
    ck, over = argv[0], argv[1:]
    cfg = load_recipe("retrieval_probe", ["logging.wandb=false", *over], reads_train_data=False)
    state.setup(cfg.parallel, cfg.seed)
    chunks = build_model_chunks(cfg)
    load_model_state(chunks, ck)
    inner = chunks[0].module
    inner.eval()
    inner.mtp_process, inner.config.mtp_num_layers = False, None
    tok = load(cfg.data.build.tokenizer)

    def acc(x: torch.Tensor, m: torch.Tensor) -> float:
        with torch.no_grad():
            pos = torch.arange(x.shape[1] - 1).expand(len(x), -1)
            pred = inner(x[:, :-1], pos, None).argmax(-1)
        return (pred == x[:, 1:])[m[:, 1:]].float().mean().item()

    short = acc(*_drill_rows(tok, (2, 4), 256, 48))
    long = acc(*_drill_rows(tok, (6, 11), 256, 48))
    answer = acc(*_dense_rows(tok, 256, 48))
    print(f"{ck}: copy short {short:.3f} long {long:.3f} | dense answer {answer:.3f}", flush=True)
    state.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
