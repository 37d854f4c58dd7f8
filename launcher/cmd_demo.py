"""`exaone-train demo`: the main job on CPU. Grows as features land: today it builds the tiny
K-EXAONE, prints its info, and runs one forward/backward."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the tiny K-EXAONE demo on CPU")
    p.add_argument("--recipe", default="tiny_cpu")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from exaone_train.config.load import load_recipe
    from exaone_train.model.builder import build_model
    from exaone_train.model.counts import model_info
    from exaone_train.parallel import state

    cfg = load_recipe(args.recipe, args.overrides)
    print(json.dumps(model_info(cfg.model, seq_len_tokens=256), indent=2))
    state.setup(cfg.parallel, cfg.seed)
    model = build_model(cfg.model, cfg.parallel, cfg.precision)
    gen = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 257), generator=gen)
    ids, labels = tokens[:, :-1], tokens[:, 1:]
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    loss = model(ids, pos, None, labels=labels).float().mean()
    loss.backward()
    print(f"tiny K-EXAONE forward/backward: loss={loss.item():.4f} "
          f"(ln(vocab)={torch.log(torch.tensor(float(cfg.model.vocab_size))).item():.4f})")
    state.teardown()
    return 0
