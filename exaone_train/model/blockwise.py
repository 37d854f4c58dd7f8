"""Memory-bounded attention for the local path: flash-style blocks with an online softmax.

Visibility of key j from query i is decided per block from global positions (causal
`k_pos <= q_pos`, sliding window `k_pos >= q_pos - window_left`) and document ids (same
document), or from a legacy dense bool mask (True = masked). Neither the [s_q, s_k] scores
nor a [s_q, s_k] mask is ever built: a (block_q x block_k) tile of scores exists at a time,
and tiles whose position bounds put every key outside the causal / window range, or whose
documents never meet, are skipped. Sliding-window layers therefore cost O(s x (W + block)).

The backward recomputes each tile from q, k, v, the output and the per-row log-sum-exp
(FlashAttention-2's algorithm), so it holds no more than the forward. All math is fp32; the
output is cast back to the input dtype.

On CPU each query block runs as one call of PyTorch's own flash-attention CPU kernel
(`aten._scaled_dot_product_flash_attention_for_cpu` and its backward) over the contiguous
span of key blocks it can see, with that strip's additive mask; only the strip's mask exists
at a time (forward and backward rebuild it) and the kernel tiles internally. Same algorithm,
3-5x faster than the torch loop on 2 cores (`bench/attention_memory.py`); other devices run
the torch loop.

Shapes: q [b, kv_heads, rep, s_q, d] (GQA: `rep` query heads per KV head), k, v
[b, kv_heads, s_k, d].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_TOKENS = 256  # tile edge: 256 x 256 fp32 scores per head (256 KB), few Python iterations


@dataclass
class Visibility:
    """What decides whether key j is visible from query i (global positions, documents)."""

    q_pos: torch.Tensor  # [s_q] long, global positions of the query rows
    k_pos: torch.Tensor  # [s_k] long, global positions of the key columns
    window_left: int | None = None  # key visible iff q - window_left <= k <= q
    q_doc: torch.Tensor | None = None  # [b, s_q] document ids of the queries
    k_doc: torch.Tensor | None = None  # [b, s_k]
    masked: torch.Tensor | None = None  # [b, 1, s_q, s_k] bool, True = masked (legacy form)
    block: int = BLOCK_TOKENS

    def tiles(self) -> list[tuple[slice, list[slice]]]:
        """Each query block with the key blocks whose positions can be visible from it."""
        def bounds(pos: torch.Tensor) -> list[tuple[slice, int, int]]:
            out = []
            for start in range(0, pos.numel(), self.block):
                part = pos[start:start + self.block]
                out.append((slice(start, start + part.numel()), int(part.min()), int(part.max())))
            return out

        keys = bounds(self.k_pos)
        result = []
        for qs, q_lo, q_hi in bounds(self.q_pos):
            lo = -2**62 if self.window_left is None else q_lo - self.window_left
            result.append((qs, [ks for ks, k_lo, k_hi in keys if k_lo <= q_hi and k_hi >= lo]))
        return result

    def allowed(self, qs: slice, ks: slice) -> torch.Tensor | None:
        """[b or 1, 1, 1, bq, bk] bool tile (True = visible), or None if nothing is visible."""
        i, j = self.q_pos[qs].unsqueeze(1), self.k_pos[ks].unsqueeze(0)
        ok = j <= i
        if self.window_left is not None:
            ok = ok & (j >= i - self.window_left)
        ok = ok.unsqueeze(0)
        if self.q_doc is not None:
            ok = ok & (self.q_doc[:, qs].unsqueeze(2) == self.k_doc[:, ks].unsqueeze(1))
        if self.masked is not None:
            ok = ok & ~self.masked[:, 0, qs, ks].bool()
        if not bool(ok.any()):
            return None
        return ok[:, None, None]


def _tile_scores(q_blk, k_blk, allowed, scale: float) -> torch.Tensor:
    s = torch.matmul(q_blk, k_blk.unsqueeze(2).transpose(-1, -2)) * scale
    return s.masked_fill(~allowed, float("-inf"))


def _forward(q, k, v, vis: Visibility, scale: float):
    """Output [b, g, rep, s_q, d] (fp32) and the per-row log-sum-exp [b, g, rep, s_q]."""
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    for qs, key_blocks in vis.tiles():
        q_blk = q[..., qs, :]
        m = torch.full(q_blk.shape[:-1] + (1,), float("-inf"), device=q.device)
        denom = torch.zeros_like(m)
        acc = torch.zeros_like(q_blk, dtype=torch.float32)
        for ks in key_blocks:
            allowed = vis.allowed(qs, ks)
            if allowed is None:
                continue
            s = _tile_scores(q_blk, k[..., ks, :], allowed, scale)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            m_safe = torch.where(torch.isinf(m_new), 0.0, m_new)  # rows with nothing yet
            p = torch.exp(s - m_safe)
            corr = torch.exp(m - m_safe)
            denom = denom * corr + p.sum(-1, keepdim=True)
            acc = acc * corr + torch.matmul(p, v[..., ks, :].unsqueeze(2))
            m = m_new
        out[..., qs, :] = acc / denom
        lse[..., qs] = (m + torch.log(denom)).squeeze(-1)
    return out, lse


def _backward(q, k, v, out, lse, grad_out, vis: Visibility, scale: float):
    dq, dk, dv = (torch.zeros_like(t, dtype=torch.float32) for t in (q, k, v))
    delta = (grad_out * out).sum(-1, keepdim=True)  # [b, g, rep, s_q, 1]
    for qs, key_blocks in vis.tiles():
        q_blk, do_blk = q[..., qs, :], grad_out[..., qs, :]
        lse_blk, delta_blk = lse[..., qs].unsqueeze(-1), delta[..., qs, :]
        for ks in key_blocks:
            allowed = vis.allowed(qs, ks)
            if allowed is None:
                continue
            k_blk, v_blk = k[..., ks, :].unsqueeze(2), v[..., ks, :].unsqueeze(2)
            p = torch.exp(_tile_scores(q_blk, k[..., ks, :], allowed, scale) - lse_blk)
            dv[..., ks, :] += torch.matmul(p.transpose(-1, -2), do_blk).sum(2)
            ds = p * (torch.matmul(do_blk, v_blk.transpose(-1, -2)) - delta_blk)
            dq[..., qs, :] += torch.matmul(ds, k_blk) * scale
            dk[..., ks, :] += torch.matmul(ds.transpose(-1, -2), q_blk).sum(2) * scale
    return dq, dk, dv


def _strip(vis: Visibility, qs: slice, key_blocks: list[slice], rep: int):
    """The key span of a query block and its additive fp32 mask [b or 1, 1, rep*bq, span] (rows
    ordered as q[..., qs, :].flatten(2, 3)), or None when no key is visible."""
    if not key_blocks:
        return None
    ks = slice(key_blocks[0].start, key_blocks[-1].stop)
    allowed = vis.allowed(qs, ks)
    if allowed is None:
        return None
    mask = torch.zeros(allowed.shape[0], 1, allowed.shape[-2], allowed.shape[-1],
                       device=allowed.device).masked_fill_(~allowed[:, 0], float("-inf"))
    return ks, mask.repeat(1, 1, rep, 1)


def _rows(t: torch.Tensor, qs: slice) -> torch.Tensor:
    """[b, g, rep, s, d] -> the query block's rows as [b, g, rep*bq, d]."""
    return t[..., qs, :].flatten(2, 3)


class _FlashCPU(torch.autograd.Function):
    """Per query block: the flash CPU kernel over its key span; masks rebuilt in backward."""

    @staticmethod
    def forward(ctx, q, k, v, vis: Visibility, scale: float):
        q32, k32, v32 = q.float(), k.float(), v.float()
        rep = q.shape[2]
        out = torch.zeros(q.shape, dtype=torch.float32)
        lse = torch.zeros(q.shape[:-1], dtype=torch.float32)
        for qs, key_blocks in vis.tiles():
            strip = _strip(vis, qs, key_blocks, rep)
            if strip is None:  # nothing visible: as the torch loop (0/0)
                out[..., qs, :] = float("nan")
                continue
            ks, mask = strip
            o, l_ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                _rows(q32, qs), k32[..., ks, :], v32[..., ks, :], 0.0, False,
                attn_mask=mask, scale=scale)
            out[..., qs, :] = o.unflatten(2, (rep, -1))
            lse[..., qs] = l_.unflatten(2, (rep, -1))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.vis, ctx.scale = vis, scale
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        q32, k32, v32, go = q.float(), k.float(), v.float(), grad_out.float()
        rep = q.shape[2]
        dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float32) for t in (q, k, v))
        for qs, key_blocks in ctx.vis.tiles():
            strip = _strip(ctx.vis, qs, key_blocks, rep)
            if strip is None:
                continue
            ks, mask = strip
            gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                _rows(go, qs).contiguous(), _rows(q32, qs), k32[..., ks, :], v32[..., ks, :],
                _rows(out, qs).contiguous(), lse[..., qs].flatten(2, 3).contiguous(), 0.0, False,
                attn_mask=mask, scale=ctx.scale)
            dq[..., qs, :] = gq.unflatten(2, (rep, -1))
            dk[..., ks, :] += gk
            dv[..., ks, :] += gv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, vis: Visibility, scale: float):
        q32, k32, v32 = q.float(), k.float(), v.float()
        out, lse = _forward(q32, k32, v32, vis, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.vis, ctx.scale = vis, scale
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q.float(), k.float(), v.float(), out, lse, grad_out.float(),
                               ctx.vis, ctx.scale)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def blockwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility,
                        scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, visible keys only) v, tile by tile; shapes in the module doc."""
    if q.device.type == "cpu":
        return _FlashCPU.apply(q, k, v, vis, scale)
    return _BlockwiseAttention.apply(q, k, v, vis, scale)
