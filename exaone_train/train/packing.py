"""Packed (THD) micro-batches for the Transformer Engine path: document masks without a mask.

TE's fused attention takes a document-masked batch as one packed row of sequences and their
cumulative lengths (`cu_seqlens`, megatron-core's `PackedSeqParams(qkv_format="thd")`),
never a [s, s] mask. From the document ids every sample carries (`document_ids`, the same ids
the local path masks with), each document of each sample becomes one sequence of the pack:

- Under context parallelism megatron-core and TE need every sequence's length divisible by
  2*cp (each is cut into 2*cp chunks, `context.thd_partitioned_indices`): each document is
  padded at its end to that multiple. The pack's total is padded (at the last document) to
  what the layout needs: 2*cp, and cp*tp under sequence parallelism (each CP rank's tokens
  split over TP). Padding tokens have input id and label 0 and loss mask 0.
- `cu_seqlens` count the padding as part of its document (cu_seqlens_q == cu_seqlens_q_padded).
  This is exact for the real tokens: padding follows them, so under causal attention no real
  token sees it. It is also what megatron-core 0.16.1's packed MTP roll
  (`_roll_tensor_packed_seq`) needs under CP: it finds each sequence's local tokens at
  cu_seqlens_q / cp, which only holds for lengths divisible by cp.
- Each real token keeps its label (the next token of the sample, as on the local path), so
  the LM loss is the local path's; the MTP roll stops at each sequence's end (the local path
  rolls across documents), so the MTP loss drops the cross-document predictions.
- Positions restart per document (megatron's THD RoPE does the same from cu_seqlens).
- `padding_mask` (True = padding) goes to GPTModel, whose MoE routers leave padding out of
  the aux / z losses and the expert-bias counts (megatron-core 0.16.1's `padding_mask`).
  The pack is one row, so the sequence-level aux loss sees a micro-batch's samples as one
  sequence (the same with micro_batch_samples=1, as K-EXAONE's recipe has).
"""

from __future__ import annotations

import math

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from exaone_train.parallel.context import thd_partitioned_indices


def document_runs(document_ids: torch.Tensor) -> torch.Tensor:
    """Run index of every token of [b, s] `document_ids` (flattened, sample after sample): a
    run is a maximal stretch of one id within one sample."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return torch.cumsum(starts.reshape(-1), 0) - 1


def padded_lengths(lengths: torch.Tensor, cp_size: int, tp_split: int) -> torch.Tensor:
    """Each length up to a multiple of 2*cp (cp > 1); the last one further, until the total
    splits over the layout (2*cp, and cp*tp_split under sequence parallelism)."""
    each = 2 * cp_size if cp_size > 1 else 1
    padded = (lengths + each - 1) // each * each
    total = math.lcm(each, cp_size * tp_split)
    padded[-1] += (-int(padded.sum())) % total
    return padded


def pack_thd(fields: dict[str, torch.Tensor], document_ids: torch.Tensor, cp_size: int,
             cp_rank: int, tp_split: int = 1) -> tuple[dict[str, torch.Tensor], PackedSeqParams]:
    """`fields` ([b, s] each: input_ids, labels, loss_mask; position_ids is rebuilt) as one
    packed row [1, T / cp] of this CP rank's tokens, with `padding_mask` (True = padding), and
    the PackedSeqParams of the whole pack (every CP rank gets the same)."""
    runs = document_runs(document_ids)
    lengths = torch.bincount(runs)
    padded = padded_lengths(lengths, cp_size, tp_split)
    cu = torch.zeros(padded.numel() + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(padded, 0)
    total = int(cu[-1])
    real_starts = torch.cumsum(lengths, 0) - lengths
    dest = cu[runs] + torch.arange(runs.numel()) - real_starts[runs]  # real tokens' slots
    packed = {}
    for name in ("input_ids", "labels", "loss_mask"):
        flat = fields[name].reshape(-1)
        packed[name] = flat.new_zeros(total).index_copy_(0, dest, flat)
    sequence = torch.repeat_interleave(torch.arange(padded.numel()), padded)
    packed["position_ids"] = torch.arange(total) - cu[sequence]
    packed["padding_mask"] = torch.ones(total, dtype=torch.bool).index_fill_(0, dest, False)
    if cp_size > 1:
        index = thd_partitioned_indices(cu, total, cp_size, cp_rank)
        packed = {k: v.index_select(0, index) for k, v in packed.items()}
    cu32, longest = cu.to(torch.int32), int(padded.max())
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu32, cu_seqlens_kv=cu32,
                             cu_seqlens_q_padded=cu32, cu_seqlens_kv_padded=cu32,
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    return {k: v.unsqueeze(0) for k, v in packed.items()}, params
