"""Activation recomputation changes memory, not numbers: with parallel.recompute=selective
(megatron's core-attention checkpoint) or full (every layer's input kept, the layer replayed in
backward) the loss and every gradient of the tiny K-EXAONE (MoE, MTP, sliding + global
attention, document mask) equal the run without recomputation. Replay runs the same ops on the
same inputs, so the loss is bitwise equal; gradients may differ in the last bits where the
replayed backward accumulates partial gradients in another order (measured: 1.2e-10 absolute on
a QK-norm weight with selective), so they must agree to 1e-6 of each tensor's largest entry. A
recompute path that dropped a layer's gradient, replayed with other weights or lost the document
mask in the checkpoint is off by far more than that."""

import pytest

from exaone_train.config.load import load_recipe
from exaone_train.parallel import state
from exaone_train.train import trainer as trainer_mod
from exaone_train.train.step import forward_backward


def _loss_and_grads(tmp_path, recompute: str):
    cfg = load_recipe("tiny_cpu", [
        f"run.dir={tmp_path}/{recompute}", "logging.wandb=false", "train.data_source=synthetic",
        "train.seq_length_tokens=96", "train.global_batch_samples=2",
        "train.micro_batch_samples=1", "train.document_attention_mask=true",
        f"parallel.recompute={recompute}"])
    state.setup(cfg.parallel, cfg.seed)
    try:
        t = trainer_mod.Trainer(cfg, trainer_mod.prepare_run_dir(cfg))
        for chunk in t.model:
            chunk.zero_grad_buffer()
        batches = t.next_batches()
        assert batches[0].attention_mask is not None and batches[0].attention_mask.any()
        loss, _ = forward_backward(t.model, batches, cfg.train.seq_length_tokens, 1)
        grads = {n: p.main_grad.detach().clone() for n, p in t.model[0].named_parameters()}
        return loss, grads
    finally:
        state.teardown()


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recompute_gives_the_same_loss_and_gradients(tmp_path, recompute):
    ref_loss, ref = _loss_and_grads(tmp_path, "none")
    loss, grads = _loss_and_grads(tmp_path, recompute)
    assert loss == ref_loss
    assert grads.keys() == ref.keys()
    nonzero = [n for n, g in ref.items() if g.abs().sum() > 0]
    assert len(nonzero) > 0.9 * len(ref), "most parameters must receive a gradient"
    for n in ref:
        diff = (grads[n] - ref[n]).abs().max().item()
        assert diff <= 1e-6 * ref[n].abs().max().item(), f"{n}: max diff {diff}"
