"""One optimizer step: micro-batches -> megatron-core pipeline schedule -> reduced loss ->
stability check -> optimizer step (or skip)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from exaone_train.optim.clip import clip_grad_norm_ as _clip
from exaone_train.optim.clip import grad_norm as _grad_norm
from exaone_train.parallel import state
from exaone_train.parallel.context import slice_for_cp_rank
from exaone_train.train.packing import pack_thd


@dataclass
class Batch:
    """One micro-batch, [batch, seq] tensors (megatron's GPTModel transposes internally).

    Under context parallelism the tensors hold this CP rank's load-balanced part of the
    sequence (`exaone_train.parallel.context`), except `attention_mask`: the document ids of
    every position in global order, [b, s], from which the attention builds its masks tile by
    tile (no [s/cp, s] mask is ever built).

    Packed (THD, the Transformer Engine path with document masks; `train.packing`): the
    tensors are one row [1, T/cp] of this CP rank's part of every document, no
    `attention_mask`, `packed_seq_params` holds the pack's cu_seqlens and `padding_mask` its
    padding (left out of MoE routing statistics)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # [b, s] int32 document ids, global order (all ranks)
    packed_seq_params: PackedSeqParams | None = None
    padding_mask: torch.Tensor | None = None  # THD packs: [1, T/cp] bool, True = padding

    def to(self, device: torch.device) -> Batch:
        """The same micro-batch on `device` (megatron-LM's get_batch moves each one to the GPU
        in the forward step, so a step's micro-batches are never all resident at once)."""
        def move(v):
            return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v

        moved = {k: move(v) for k, v in vars(self).items()}
        if self.packed_seq_params is not None:  # TE reads cu_seqlens on the GPU
            moved["packed_seq_params"] = replace(self.packed_seq_params, **{
                k: move(v) for k, v in vars(self.packed_seq_params).items()})
        return Batch(**moved)


def thd_tp_split(cfg) -> int | None:
    """None: micro-batches of [b, s] samples (the local path masks documents itself). Else
    THD packs for Transformer Engine's attention (document masks on the TE path); the value
    is what each CP rank's tokens split over (parallel.tp under sequence parallelism)."""
    from exaone_train.model.builder import use_transformer_engine

    if not cfg.train.document_attention_mask or not use_transformer_engine(cfg.precision):
        return None
    return cfg.parallel.tp if cfg.parallel.sequence_parallel else 1


def collate(samples: Sequence[Any], document_mask: bool, cp_size: int = 1,
            cp_rank: int = 0, thd_tp_split: int | None = None) -> Batch:
    """Stack data-pipeline samples (tokens [s+1], loss_mask, document_ids) and keep CP rank
    `cp_rank`'s part of the sequence (megatron-LM's get_batch_on_this_cp_rank), or, with
    `thd_tp_split` (`thd_tp_split(cfg)`) and document masks, pack them THD (`train.packing`).

    Positions are the sample's own 0..s-1: megatron's GPTModel ignores `position_ids` under
    RoPE, and RoPE scores depend on i - j only, so with the document mask (attention never
    crosses documents) restarting them per document would change nothing."""
    tokens = torch.from_numpy(np.stack([s.tokens for s in samples])).long()
    docs = torch.from_numpy(np.stack([s.document_ids for s in samples]))
    pos = torch.arange(tokens.shape[1] - 1).unsqueeze(0).expand(len(samples), -1)
    loss_mask = torch.from_numpy(np.stack([s.loss_mask for s in samples])).float()

    if document_mask and thd_tp_split is not None:
        fields = dict(input_ids=tokens[:, :-1], labels=tokens[:, 1:], loss_mask=loss_mask)
        packed, params = pack_thd(fields, docs, cp_size, cp_rank, thd_tp_split)
        return Batch(**packed, attention_mask=None, packed_seq_params=params)

    def local(t: torch.Tensor) -> torch.Tensor:
        return slice_for_cp_rank(t.contiguous(), 1, cp_size, cp_rank)

    doc_ids = docs.to(torch.int32).contiguous() if document_mask else None
    return Batch(input_ids=local(tokens[:, :-1]), labels=local(tokens[:, 1:]),
                 loss_mask=local(loss_mask), position_ids=local(pos), attention_mask=doc_ids)


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of per-token losses and the token count (megatron's per-token-loss contract)."""
    losses = output_tensor.float()
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(losses.view(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach().clone(), mask.sum()])
    return loss_sum, num_tokens, {"lm_loss": report}


def _forward_step(data_iterator: Iterator[Batch], model):
    b = next(data_iterator).to(state.device())
    output = model(b.input_ids, b.position_ids, b.attention_mask, labels=b.labels,
                   loss_mask=b.loss_mask, packed_seq_params=b.packed_seq_params,
                   padding_mask=b.padding_mask)
    return output, partial(_loss_func, b.loss_mask)


@dataclass
class StepResult:
    loss: float  # global per-token mean LM loss (all DP ranks, all micro-batches)
    num_tokens: int  # loss tokens in the global batch
    grad_norm: float | None
    skipped: bool
    skip_reason: str | None = None


def _global_mean_loss(losses_reduced: list[dict]) -> tuple[float, int]:
    """Sum (loss, tokens) over micro-batches and DP; broadcast from the last PP stage."""
    total = torch.zeros(2, dtype=torch.float64, device=state.device())
    for entry in losses_reduced:
        total += entry["lm_loss"].double()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        dist.broadcast(total, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    loss = (total[0] / total[1].clamp(min=1)).item()
    return loss, int(total[1].item())


def reset_moe_aux_scale() -> None:
    """megatron keeps the aux-loss scale in a class attribute and copy_()s into it; a scale of
    another shape left by an earlier model in this process (tests, eval) would break the next
    schedule run. Call before every run of megatron's schedule."""
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    MoEAuxLossAutoScaler.main_loss_backward_scale = None


def forward_backward(model_chunks: list, batches: list[Batch], seq_length: int,
                     micro_batch: int, forward_only: bool = False) -> tuple[float, int]:
    """Run megatron-core's schedule (no pipelining / 1F1B / interleaved) over `batches`."""
    fb = get_forward_backward_func()
    reset_moe_aux_scale()
    if batches and batches[0].packed_seq_params is not None:
        seq_length, micro_batch = _packed_shape(model_chunks, batches)
    n_chunks = len(model_chunks)
    iterators = [iter(batches) for _ in range(n_chunks)]
    losses = fb(forward_step_func=_forward_step,
                data_iterator=iterators if n_chunks > 1 else iterators[0],
                model=model_chunks if n_chunks > 1 else model_chunks[0],
                num_microbatches=len(batches), seq_length=seq_length,
                micro_batch_size=micro_batch, forward_only=forward_only)
    return _global_mean_loss(losses if parallel_state.is_pipeline_last_stage() else [])


def _packed_shape(model_chunks: list, batches: list[Batch]) -> tuple[int, int]:
    """THD packs are one row of T tokens, T varying with the documents' padding under CP: the
    pipeline then sends each message's shape first (megatron's `variable_seq_lengths`)."""
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        get_model_config(model_chunks[0]).variable_seq_lengths = True
    cp = parallel_state.get_context_parallel_world_size()
    return batches[0].input_ids.shape[1] * cp, 1


def train_step(model_chunks: list, optimizer, batches: list[Batch], seq_length: int,
               micro_batch: int, should_skip: Callable[[float], str | None]) -> StepResult:
    """Forward/backward, then step unless the loss or the gradient says skip.

    `should_skip(loss)` is the stability guard's loss check (None = fine). Every rank sees the
    same loss and grad norm, so every rank takes the same decision.
    """
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    loss, num_tokens = forward_backward(model_chunks, batches, seq_length, micro_batch)
    reason = should_skip(loss)
    if reason is not None:
        return StepResult(loss, num_tokens, None, True, reason)
    optimizer.prepare_grads()  # main_grad -> grad (fp32 master grads for bf16 params)
    # One norm over every parameter, each counted once across TP/PP/EP (dense grads reduced
    # over the model-parallel group, routed experts over the expert TP x EP x PP group) and,
    # with the distributed optimizer, across the DP ranks that own disjoint parameters.
    grad_norm = _grad_norm(optimizer.optimizer, getattr(optimizer, "dp_sharded", False))
    # every rank sees the same norm, so every rank skips (nothing applied, nothing gathered)
    if not math.isfinite(grad_norm):
        return StepResult(loss, num_tokens, grad_norm, True, "non-finite gradient")
    _clip(optimizer.optimizer, optimizer.config.clip_grad, norm=grad_norm)
    optimizer.step_with_ready_grads()
    return StepResult(loss, num_tokens, grad_norm, False)

