"""Short-context validation loss (the curriculum gates' `max_short_loss_increase`): the mean
next-token loss over a fixed range of samples of one data stage, under the trainer's own model
and layout. Forward only, through megatron-core's pipeline schedule (TP/PP/VPP/EP/CP/DP all
work as in training); every rank returns the same value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from megatron.core import parallel_state

from exaone_train.curriculum.config import ValidationConfig
from exaone_train.train.step import collate, forward_backward, thd_tp_split

if TYPE_CHECKING:
    from exaone_train.config.schema import RecipeConfig


def build_validation_data(v: ValidationConfig, recipe: RecipeConfig) -> Any:
    """The validation data stage's dataset (read with the data seed, like training)."""
    from data_pipeline import build_stage_dataset

    stage = recipe.data.stages[str(v.data_stage)]
    if recipe.train.data_source == "synthetic":  # tests and benchmarks without files
        from exaone_train.train.synthetic import SyntheticStageDataset

        return SyntheticStageDataset(stage.seq_length, recipe.model.vocab_size, recipe.seed + 1)
    return build_stage_dataset(stage, seed=recipe.data.seed)


def _clear_trackers() -> None:
    """megatron's MoE and MTP loss trackers are read by the next step's MoEStats: leave them
    as the last training step left them (empty)."""
    from megatron.core.transformer.moe import moe_utils
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    moe_utils.clear_aux_losses_tracker()
    if MTPLossLoggingHelper.tracker.get("values") is not None:
        MTPLossLoggingHelper.clean_loss_in_tracker()


def validation_loss(trainer: Any, v: ValidationConfig, dataset: Any) -> float:
    """Mean loss per token over samples [v.first_sample, v.first_sample + v.num_samples) of
    `dataset` (collective). Each DP rank takes its slice; CP ranks their load-balanced part of
    each sample. No gradient: the MoE routers count no tokens for the expert-bias update (they
    count only with grad enabled), so training after it is unchanged."""
    t = trainer.cfg.train
    indices = range(v.first_sample, v.first_sample + v.num_samples)
    mine = dataset.rank_slice(indices, parallel_state.get_data_parallel_rank(),
                              parallel_state.get_data_parallel_world_size())
    mb = v.micro_batch_samples
    cp_size = parallel_state.get_context_parallel_world_size()
    cp_rank = parallel_state.get_context_parallel_rank()
    thd = thd_tp_split(trainer.cfg)
    batches = [collate([dataset[i] for i in mine[k:k + mb]], t.document_attention_mask,
                       cp_size, cp_rank, thd) for k in range(0, len(mine), mb)]
    seq = len(dataset[v.first_sample].loss_mask)
    modes = [chunk.training for chunk in trainer.model]
    for chunk in trainer.model:
        chunk.eval()
    try:
        with torch.no_grad():
            loss, _ = forward_backward(trainer.model, batches, seq, mb, forward_only=True)
    finally:
        for chunk, mode in zip(trainer.model, modes, strict=True):
            chunk.train(mode)
        _clear_trackers()
    return loss
