"""Context parallelism (CP) helpers: megatron-core's load-balanced sequence layout and the
K/V all-gather of the local attention path.

Layout: the sequence is cut into 2*cp chunks and CP rank r holds chunks r and 2*cp-1-r, in
that order (megatron-core's RoPE, `get_pos_emb_on_this_cp_rank`, and megatron-LM's
`get_batch_on_this_cp_rank` assume exactly this; it balances causal attention work). Every
per-token tensor of a micro-batch is sliced this way before the forward pass.

Attention ("all_gather" CP, as Llama 3 and TE's `cp_comm_type="all_gather"`): each rank
all-gathers K and V over the CP group, puts them back in global sequence order and attends
with its own queries to every key, with masks on global positions. The gather's backward
reduce-scatters dK/dV, so each rank ends up with the gradient of its own chunks summed over
every rank's queries.

The functions take the CP size, rank and group as arguments (the model gets its group from
megatron-core's `pg_collection`); nothing here creates process groups.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

from exaone_train.parallel.halo import BYTES_SENT


def load_balanced_positions(seq_len: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Global positions held by CP rank `cp_rank`, in local order (chunks r, 2*cp-1-r)."""
    if seq_len % (2 * cp_size):
        raise ValueError(f"sequence length {seq_len} is not divisible by 2*cp={2 * cp_size}")
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank={cp_rank} is not in [0, {cp_size})")
    chunks = torch.arange(seq_len).view(2 * cp_size, seq_len // (2 * cp_size))
    return chunks[[cp_rank, 2 * cp_size - 1 - cp_rank]].reshape(-1)


def slice_for_cp_rank(t: torch.Tensor, dim: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """This CP rank's part of `t` along its sequence dimension `dim` (a no-op for cp=1)."""
    if cp_size == 1:
        return t
    index = load_balanced_positions(t.shape[dim], cp_size, cp_rank).to(t.device)
    return t.index_select(dim, index).contiguous()


def _global_order(local_len: int, cp_size: int, device: torch.device) -> torch.Tensor:
    """Index into the rank-ordered gather that puts it back in global sequence order."""
    seq_len = local_len * cp_size
    gathered = torch.cat([load_balanced_positions(seq_len, cp_size, r) for r in range(cp_size)])
    return torch.argsort(gathered).to(device)


def gather_sequence(t_S: torch.Tensor, group) -> torch.Tensor:
    """All-gather `t_S` ([s_local, ...], sequence first) over the CP `group` into global
    sequence order [s, ...]. Autograd: the backward reduce-scatters (sums) the gradient."""
    cp_size = group.size()
    if cp_size == 1:
        return t_S
    # a ring all-gather sends (cp-1) local parts; its backward reduce-scatter as many again
    BYTES_SENT["all_gather"] += ((2 if t_S.requires_grad else 1) * (cp_size - 1)
                                 * t_S.numel() * t_S.element_size())
    gathered = gather_from_sequence_parallel_region(t_S, tensor_parallel_output_grad=True,
                                                    group=group)
    return gathered.index_select(0, _global_order(t_S.shape[0], cp_size, t_S.device))
