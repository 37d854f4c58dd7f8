"""The blockwise (online-softmax, per-tile backward) local attention gives the outputs and
gradients of a dense softmax reference (torch's scaled_dot_product_attention with an explicit
bool mask, K/V repeated per query head), for causal, sliding-window and document masks, lengths
that are not a multiple of the tile, GQA and query positions that are not a prefix of the keys
(the CP layout); and it saves for backward what the planner counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from exaone_train.model import blockwise as bw
from exaone_train.model.blockwise import Visibility, blockwise_attention
from launcher.resource_plan import blockwise_saved_bytes_per_token

B, G, REP, D = 2, 2, 3, 16  # GQA: 2 KV heads, 3 query heads each
BLOCK = 32  # small tiles: several per sequence, the last one partial


def _reference(q, k, v, vis: Visibility, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with the mask written out densely."""
    i, j = vis.q_pos[:, None], vis.k_pos[None, :]
    ok = (j <= i) & (j >= i - vis.window_left if vis.window_left is not None else True)
    ok = ok[None].expand(q.shape[0], -1, -1)
    if vis.q_doc is not None:
        ok = ok & (vis.q_doc[:, :, None] == vis.k_doc[:, None, :])
    b, g, rep, s, d = q.shape
    qh = q.reshape(b, g * rep, s, d)
    kh, vh = (t.repeat_interleave(rep, dim=1) for t in (k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=ok[:, None], scale=scale)
    return out.reshape(b, g, rep, s, d)


def _case(s_k: int, q_pos: torch.Tensor, window: int | None, docs: bool) -> tuple:
    torch.manual_seed(s_k + q_pos.numel())
    q = torch.randn(B, G, REP, q_pos.numel(), D, requires_grad=True)
    k = torch.randn(B, G, s_k, D, requires_grad=True)
    v = torch.randn(B, G, s_k, D, requires_grad=True)
    k_pos = torch.arange(s_k)
    vis = Visibility(q_pos, k_pos, window, block=BLOCK)
    if docs:  # documents of uneven lengths, boundaries at different places per sample
        doc_ids = torch.stack([torch.arange(s_k) // 23, torch.arange(s_k) // 41])
        vis.q_doc, vis.k_doc = doc_ids[:, q_pos], doc_ids
    return q, k, v, vis


@pytest.mark.parametrize(("s_k", "q_slice", "window", "docs"), [
    (101, None, None, False),        # causal, 101 = 3 tiles + 5
    (101, None, 9, True),            # sliding window + documents
    (77, None, None, True),          # global + documents
    (96, "cp", 20, True),            # CP-like queries: chunks 0 and 3 of 4, window crosses
])
# cpu: PyTorch's flash CPU kernel per query block (what runs here); loop: the torch tile loop
# (what other devices run), called directly so CPU covers it too
@pytest.mark.parametrize("path", ["cpu", "loop"])
def test_blockwise_matches_dense_softmax_outputs_and_grads(s_k, q_slice, window, docs, path):
    q_pos = torch.arange(s_k) if q_slice is None else \
        torch.cat([torch.arange(0, s_k // 4), torch.arange(3 * s_k // 4, s_k)])
    q, k, v, vis = _case(s_k, q_pos, window, docs)
    scale = D**-0.5
    grad = torch.randn(q.shape, dtype=q.dtype)
    out = blockwise_attention(q, k, v, vis, scale) if path == "cpu" else \
        bw._BlockwiseAttention.apply(q, k, v, vis, scale)
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref = _reference(q, k, v, vis, scale)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    for g_got, g_want in zip(got, want, strict=True):
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=2e-6)


def test_tiles_outside_the_window_are_skipped():
    vis = Visibility(torch.arange(256), torch.arange(256), window_left=9, block=BLOCK)
    visited = sum(len(keys) for _, keys in vis.tiles())
    assert visited == 8 + 7  # the diagonal tiles and the one before each: O(s * (W + block))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_for_backward_is_what_the_planner_counts(dtype):
    """Distinct storages autograd keeps beyond q/k/v = the planner's fp32 output + LSE."""
    s = 70
    q, k, v, vis = _case(s, torch.arange(s), 9, True)
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        blockwise_attention(q, k, v, vis, D**-0.5)
    tp = 2
    m = SimpleNamespace(num_attention_heads=G * REP * tp, head_dim=D)
    e = torch.finfo(dtype).bits // 8
    assert sum(saved.values()) == B * s * blockwise_saved_bytes_per_token(m, tp, e)
