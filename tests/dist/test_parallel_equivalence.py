"""Parallel layouts compute the same model: on 2 gloo processes, TP2 (with and without sequence
parallelism), EP2 and PP2 (megatron-core's pipeline schedule, forward only) each give the loss
one process gives on the same weights and batch (fp32, relative difference <= 1e-5; measured <= 1e-7). K-EXAONE: TP2+SP, EP2, PP2 (MoE with
TP requires SP); EXAONE 4.0 (dense): TP2, TP2+SP, PP2.

Weights: a tiny random K-EXAONE from `transformers` (MoE with random router and expert bias,
MTP block, LLLG + window 4, vocab 500 padded to 512), imported through our converter under the
single-process layout (TP=PP=EP=1, data-parallel replicas), saved in the model checkpoint
format, then loaded under each layout: dist_checkpointing reshards.
"""

from __future__ import annotations

import functools

import pytest
import torch

from exaone_train.config.schema import ParallelConfig
from exaone_train.parallel.testing import run_distributed

RTOL = 1e-5
SEQ, BATCH = 16, 2  # SEQ > window (4); divisible by TP for sequence parallelism
LAYOUTS = {
    "tp2": ParallelConfig(tp=2),
    "tp2_sp": ParallelConfig(tp=2, sequence_parallel=True),
    "ep2": ParallelConfig(ep=2),
    "pp2": ParallelConfig(pp=2),
}


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(5))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _forward_step(batch, data_iterator, model):
    ids, labels = batch
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    output = model(ids, pos, None, labels=labels)

    def loss_func(per_token_loss_BS):
        loss = per_token_loss_BS.float().mean()
        return loss, {"loss": loss.detach()}

    return output, loss_func


def _loss(model, batch) -> float | None:
    """Mean per-token loss through megatron-core's schedule (PP-aware, forward only); None on
    pipeline stages that do not compute the loss."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model.eval()
    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=functools.partial(_forward_step, batch), data_iterator=iter([None]),
            model=[model], num_microbatches=1, seq_length=SEQ, micro_batch_size=BATCH,
            forward_only=True)
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return float(out[0]["loss"])


def _worker(hf_dir: str, ckpt_dir: str, layouts: list[str]) -> dict[str, float | None]:
    from exaone_train.checkpoint.model_checkpoint import (
        load_model_checkpoint,
        save_model_checkpoint,
    )
    from exaone_train.config.schema import PrecisionConfig, RecipeConfig
    from exaone_train.export.convert import load_hf_state_dict, model_config_for_hf
    from exaone_train.export.hf_io import read_hf_config, read_hf_tensors
    from exaone_train.model.builder import build_model
    from exaone_train.parallel import state

    tensors = read_hf_tensors(hf_dir)
    m = model_config_for_hf(read_hf_config(hf_dir), list(tensors), name="tiny")
    cfg = RecipeConfig(model=m, parallel=ParallelConfig(), precision=PrecisionConfig("fp32"))
    state.init_model_parallel(cfg.parallel, cfg.seed)
    model = build_model(m, cfg.parallel, cfg.precision)
    load_hf_state_dict(model, tensors, m)
    batch = _batch(m.vocab_size)
    losses = {"single": _loss(model, batch)}
    save_model_checkpoint(model, cfg, ckpt_dir)
    for name in layouts:
        layout = LAYOUTS[name]
        state.init_model_parallel(layout, cfg.seed)
        _, model = load_model_checkpoint(ckpt_dir, parallel_cfg=layout)
        losses[name] = _loss(model, batch)
    return losses


@pytest.mark.parametrize("family", ["kexaone", "exaone4"])
def test_tp_ep_pp_match_single_process(family, tmp_path):
    from exaone_train.export import tiny

    if family == "kexaone":
        hf_config = tiny.kexaone_config(num_hidden_layers=4, vocab_size=500)
    else:  # EXAONE 4.0 32B layout: post-norms on the TP-reduced / SP-scattered outputs
        hf_config = tiny.exaone4_config("32b", vocab_size=500)
    hf = tiny.build_hf_model(hf_config)
    hf_dir = tiny.save_hf_model(hf, tmp_path / "hf", with_mtp=family == "kexaone")
    # validate(): MoE with TP needs sequence parallelism; EP needs experts
    layouts = ["tp2_sp", "ep2", "pp2"] if family == "kexaone" else ["tp2", "tp2_sp", "pp2"]
    results = run_distributed(_worker, 2, str(hf_dir), str(tmp_path / "ckpt"), layouts,
                              timeout_s=300)
    print("losses per rank:", results)
    single = results[0]["single"]
    assert single is not None and single == results[1]["single"]
    for name in layouts:
        got = [r[name] for r in results if r[name] is not None]
        assert got, f"{name}: no rank computed a loss"
        for loss in got:
            assert abs(loss - single) <= RTOL * abs(single), (name, loss, single)
