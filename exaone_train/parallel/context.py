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


def thd_partitioned_indices(cu_seqlens_padded: torch.Tensor, total_tokens: int, cp_size: int,
                            cp_rank: int) -> torch.Tensor:
    """The packed (THD) tokens CP rank `cp_rank` holds, in its local order: the load-balanced
    layout applied to EVERY sequence of the pack (sequence i, of padded length L_i, in 2*cp
    chunks of L_i / (2*cp); this rank takes chunks r and 2*cp-1-r of each, sequence after
    sequence). A torch port of Transformer Engine's `thd_get_partitioned_indices` (CUDA only),
    which megatron-core's `get_thd_batch_on_this_cp_rank` calls."""
    cu = cu_seqlens_padded.long().cpu()
    lengths = cu[1:] - cu[:-1]
    if int(cu[-1]) != total_tokens:
        raise ValueError(f"cu_seqlens_padded ends at {int(cu[-1])}, the pack holds {total_tokens}")
    if bool((lengths % (2 * cp_size)).any()):
        raise ValueError(f"every padded sequence length must be divisible by 2*cp={2 * cp_size}: "
                         f"{lengths.tolist()}")
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank={cp_rank} is not in [0, {cp_size})")
    chunk = lengths // (2 * cp_size)  # per sequence
    seq = torch.repeat_interleave(torch.arange(lengths.numel()), 2 * chunk)
    local_start = torch.cumsum(2 * chunk, 0) - 2 * chunk
    index = torch.arange(total_tokens // cp_size) - local_start[seq]  # within this rank's part
    second = index >= chunk[seq]
    block = torch.where(second, 2 * cp_size - 1 - cp_rank, cp_rank)
    return cu[seq] + block * chunk[seq] + index - second.long() * chunk[seq]
