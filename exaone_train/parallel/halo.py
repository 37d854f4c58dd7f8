"""Halo exchange for sliding-window attention under context parallelism (issue 13).

With megatron's load-balanced layout (2*cp chunks of L tokens, rank r holds chunks r and
2*cp-1-r) a sliding-window query of chunk c sees at most the `halo` = W-1 keys before c, all
in chunk c-1 when halo <= L. So instead of all-gathering K/V, rank r:
- sends the tail of its first chunk (r) to rank r+1, whose first chunk r+1 needs it, and
  receives its own first chunk's halo from rank r-1 (rank 0's chunk 0 has none);
- sends the tail of its second chunk (2cp-1-r) to rank r-1, whose second chunk 2cp-r needs it,
  and receives its second chunk's halo from rank r+1; rank cp-1's second chunk (cp) follows
  its own first chunk (cp-1), so that halo is local.
The backward sends each halo's gradient back the same way, to the rank that owns those keys.
Traffic is O(halo) per chunk boundary instead of O(s).

`BYTES_SENT` counts what this process sent (forward and backward) through `exchange_halo` and
`context.gather_sequence`, for `bench/cp_traffic.py`.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

BYTES_SENT: Counter = Counter()


def halo_fits(local_len: int, halo: int) -> bool:
    """Whether a halo of `halo` tokens lies within one neighbouring chunk (L = local_len / 2)."""
    return 0 < halo <= local_len // 2


def _exchange(sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]],
              group, kind: str) -> None:
    """Post every send and receive (peer = rank in `group`) at once, then wait."""
    ops = [dist.P2POp(dist.isend, t.contiguous(), dist.get_global_rank(group, p), group)
           for t, p in sends]
    ops += [dist.P2POp(dist.irecv, t, dist.get_global_rank(group, p), group) for t, p in recvs]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    BYTES_SENT[kind] += sum(t.numel() * t.element_size() for t, _ in sends)


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t_S: torch.Tensor, halo: int, group):
        rank, size, chunk = group.rank(), group.size(), t_S.shape[0] // 2
        first_tail, second_tail = t_S[chunk - halo:chunk], t_S[2 * chunk - halo:]
        halo_first = t_S.new_empty((halo if rank > 0 else 0,) + t_S.shape[1:])
        # rank cp-1's second chunk follows its first: those keys are here already
        halo_second = t_S.new_empty((halo if rank < size - 1 else 0,) + t_S.shape[1:])
        sends, recvs = [], []
        if rank < size - 1:
            sends.append((first_tail, rank + 1))
            recvs.append((halo_second, rank + 1))
        if rank > 0:
            sends.append((second_tail, rank - 1))
            recvs.append((halo_first, rank - 1))
        _exchange(sends, recvs, group, "halo")
        ctx.halo, ctx.group, ctx.shape = halo, group, t_S.shape
        ctx.dtype, ctx.device = t_S.dtype, t_S.device
        return halo_first, halo_second

    @staticmethod
    def backward(ctx, grad_first, grad_second):
        rank, size, halo, group = ctx.group.rank(), ctx.group.size(), ctx.halo, ctx.group
        chunk = ctx.shape[0] // 2
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        if grad_first is None:  # an unused output's gradient is zero
            grad_first = grad.new_zeros((halo if rank > 0 else 0,) + ctx.shape[1:])
        if grad_second is None:
            grad_second = grad.new_zeros((halo if rank < size - 1 else 0,) + ctx.shape[1:])
        sends, recvs = [], []
        if rank > 0:
            sends.append((grad_first, rank - 1))
            recvs.append((grad.new_empty((halo,) + ctx.shape[1:]), rank - 1))
        if rank < size - 1:
            sends.append((grad_second, rank + 1))
            recvs.append((grad.new_empty((halo,) + ctx.shape[1:]), rank + 1))
        _exchange(sends, recvs, group, "halo")
        for buf, peer in recvs:  # from r-1: my second tail's; from r+1: my first tail's
            start = 2 * chunk - halo if peer == rank - 1 else chunk - halo
            grad[start:start + halo] += buf
        return grad, None, None


def exchange_halo(t_S: torch.Tensor, halo: int, group) -> tuple[torch.Tensor, torch.Tensor]:
    """[halo_1, chunk_1, halo_2, chunk_2] of this rank's `t_S` ([s_local, ...], load-balanced
    local order) and their global positions. Autograd: halo gradients go back to their owner."""
    size, rank, chunk = group.size(), group.rank(), t_S.shape[0] // 2
    if not halo_fits(t_S.shape[0], halo):
        raise ValueError(f"halo of {halo} tokens does not fit a chunk of {chunk}")
    halo_first, halo_second = _HaloExchange.apply(t_S, halo, group)
    parts = [halo_first, t_S[:chunk], halo_second, t_S[chunk:]]
    starts = [rank * chunk, (2 * size - 1 - rank) * chunk]
    pos = [torch.arange(starts[0] - halo_first.shape[0], starts[0]),
           torch.arange(starts[0], starts[0] + chunk),
           torch.arange(starts[1] - halo_second.shape[0], starts[1]),
           torch.arange(starts[1], starts[1] + chunk)]
    return torch.cat(parts), torch.cat(pos).to(t_S.device)
