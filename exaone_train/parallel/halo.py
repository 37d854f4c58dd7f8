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


def _halo_sizes(rank: int, size: int, halo: int) -> tuple[int, int]:
    """Keys received before this rank's first and second chunk (rank 0's chunk 0 has no
    predecessor; rank cp-1's second chunk follows its own first, so those keys are here)."""
    return (halo if rank > 0 else 0), (halo if rank < size - 1 else 0)


class _HaloExchange(torch.autograd.Function):
    """[s_local, ...] -> [halo_1 + chunk_1 + halo_2 + chunk_2, ...] in one buffer: the halos
    are received straight into it and its gradient is read straight from it (no copies of
    the halos, no per-slice gradient buffers)."""

    @staticmethod
    def forward(ctx, t_S: torch.Tensor, halo: int, group):
        rank, size, chunk = group.rank(), group.size(), t_S.shape[0] // 2
        h1, h2 = _halo_sizes(rank, size, halo)
        out = t_S.new_empty((2 * chunk + h1 + h2,) + t_S.shape[1:])
        out[h1:h1 + chunk] = t_S[:chunk]
        out[h1 + chunk + h2:] = t_S[chunk:]
        sends, recvs = [], []
        if rank < size - 1:  # my first chunk's tail -> r+1; r+1's tail is my second's halo
            sends.append((t_S[chunk - halo:chunk], rank + 1))
            recvs.append((out[h1 + chunk:h1 + chunk + h2], rank + 1))
        if rank > 0:  # my second chunk's tail -> r-1; r-1's tail is my first's halo
            sends.append((t_S[2 * chunk - halo:], rank - 1))
            recvs.append((out[:h1], rank - 1))
        _exchange(sends, recvs, group, "halo")
        ctx.halo, ctx.group = halo, group
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rank, size, halo, group = ctx.group.rank(), ctx.group.size(), ctx.halo, ctx.group
        h1, h2 = _halo_sizes(rank, size, halo)
        chunk = (grad_out.shape[0] - h1 - h2) // 2
        grad = torch.cat([grad_out[h1:h1 + chunk], grad_out[h1 + chunk + h2:]])
        sends, recvs = [], []
        if rank > 0:  # my first halo's gradient goes back to r-1, r-1 returns my second tail's
            sends.append((grad_out[:h1], rank - 1))
            recvs.append((grad.new_empty((halo,) + grad.shape[1:]), rank - 1))
        if rank < size - 1:
            sends.append((grad_out[h1 + chunk:h1 + chunk + h2], rank + 1))
            recvs.append((grad.new_empty((halo,) + grad.shape[1:]), rank + 1))
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
    h1, h2 = _halo_sizes(rank, size, halo)
    starts = [rank * chunk, (2 * size - 1 - rank) * chunk]
    pos = torch.cat([torch.arange(starts[0] - h1, starts[0] + chunk),
                     torch.arange(starts[1] - h2, starts[1] + chunk)])
    return _HaloExchange.apply(t_S, halo, group), pos.to(t_S.device)
