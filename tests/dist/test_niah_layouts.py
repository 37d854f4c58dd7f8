"""NIAH predictions under DP2 x EP2, TP2 + SP, CP2, PP2 and PP2 x VPP2 (2 gloo processes) are
the token ids a plain single-model forward of the same weights predicts.

The reference is independent of the scoring path: full-sequence logits of the whole model
(`export.forward.lm_logits`, no schedule, no output-layer hook, no sharding), argmax over the
tokenizer vocab at every answer position. The layouts change reduction orders (TP all-reduce,
CP K/V gather, EP all-to-all), so logits differ in the last bits: a prediction whose reference
top-2 logit gap is below 1e-4 could flip and is not compared (measured: none of the 45
answer positions is that close on this untrained model, the smallest gap is 7e-4).
One spawn runs every layout (megatron's groups are rebuilt per layout): ~1 process start."""

from __future__ import annotations

import torch

from exaone_train.parallel.testing import run_distributed

BASE = ["logging.wandb=false", "train.data_source=synthetic", "train.seq_length_tokens=256",
        "train.micro_batch_samples=2", "train.global_batch_samples=4"]
LAYOUTS = {
    "dp2_ep2": ["parallel.ep=2"],
    "tp2_sp": ["parallel.tp=2", "parallel.sequence_parallel=true"],
    "cp2": ["parallel.cp=2"],
    "pp2": ["parallel.pp=2"],
    "pp2_vpp2": ["parallel.pp=2", "parallel.virtual_pp=2"],
}
MIN_GAP = 1e-4


def _samples(recipe):
    from exaone_train.eval.niah_config import NiahConfig
    from exaone_train.eval.niah_samples import load_haystacks, make_samples

    grid = NiahConfig(lengths=[128, 256], depths=[0.0, 0.5, 1.0], samples_per_cell=3)
    stacks, tok = load_haystacks(grid, recipe.data)
    return {n: make_samples(grid, stacks, tok, n) for n in grid.lengths}


def _reference(chunk, samples, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax ids, top-2 gap) at the answer positions from full logits of the whole model."""
    import numpy as np

    from exaone_train.eval.niah import _gpt
    from exaone_train.export.forward import lm_logits

    model = _gpt(chunk)
    model.eval()
    tokens = torch.from_numpy(np.stack([s.tokens for s in samples]))
    width = max(len(s.answer) for s in samples)
    s = tokens.shape[1]
    logits = lm_logits(model, tokens)[:, s - 1 - width:s - 1, :vocab].float()
    model.train()
    top2 = logits.topk(2, dim=-1).values
    return logits.argmax(-1), top2[..., 0] - top2[..., 1]


def _all_layouts(tmp: str) -> dict:
    from exaone_train.checkpoint.model_state import load_model_state, save_model_state
    from exaone_train.config.load import load_recipe
    from exaone_train.eval.niah import score_samples
    from exaone_train.parallel import state
    from exaone_train.train.trainer import build_model_chunks

    recipe = load_recipe("tiny_cpu", BASE)
    state.setup(recipe.parallel, recipe.seed)  # DP2: the whole model on each rank
    chunks = build_model_chunks(recipe)
    save_model_state(chunks, f"{tmp}/init")
    samples = _samples(recipe)
    vocab = recipe.model.vocab_size
    out = {"reference": {n: _reference(chunks[0], ss, vocab) for n, ss in samples.items()}}
    for name, layout in LAYOUTS.items():
        cfg = load_recipe("tiny_cpu", [*BASE, *layout])
        state.init_model_parallel(cfg.parallel, cfg.seed)
        chunks = build_model_chunks(cfg)
        load_model_state(chunks, f"{tmp}/init")
        out[name] = {n: score_samples(chunks, ss, vocab, micro_batch=2)[1]
                     for n, ss in samples.items()}
    return out


def test_niah_predictions_match_a_plain_forward_under_every_layout(tmp_path):
    results = run_distributed(_all_layouts, 2, str(tmp_path))
    ref = results[0]["reference"]
    compared, answer_positions = 0, 0
    for name in LAYOUTS:
        for n, (ids, gap) in ref.items():
            sure = gap > MIN_GAP
            for rank in (0, 1):  # every rank gets every sample's predictions
                got = results[rank][name][n]
                # score_samples blanks (-1) positions left of a shorter answer
                keep = sure & (got >= 0)
                assert torch.equal(got[keep], ids[keep]), (
                    f"{name} rank {rank} length {n}: {got.tolist()} vs {ids.tolist()}, "
                    f"smallest gap {gap.min():.2e}")
            compared += int((sure & (results[0][name][n] >= 0)).sum())
            answer_positions += int((results[0][name][n] >= 0).sum())
    assert compared >= 0.9 * answer_positions, f"{compared} of {answer_positions} compared"
