"""Context parallelism on the local attention path (2 gloo processes): LocalCoreAttention
under CP2 (K/V all-gathered, masks on global positions) gives the output and the q/k/v
gradients of cp=1 attention on the same tensors, for causal, sliding-window (window crossing
the chunk boundaries) and document masks: to 5e-6 (fp32, values O(1); measured <= 7.2e-7; a
wrong position or mask is off by > 0.1).

Training under parallel.cp=2 (dense EXAONE 4.0, MoE K-EXAONE with MTP, with and without
document masks) is checked against 1 process in test_trainer_layouts.py, which holds the
shared 1-process references.
"""

from __future__ import annotations

from types import SimpleNamespace

from exaone_train.parallel.testing import run_distributed

SEQ, BATCH, HEADS, GROUPS, DIM = 32, 2, 4, 2, 8


def _attention(window: int | None, cp_group):
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from exaone_train.model.layers import LocalCoreAttention

    config = TransformerConfig(num_layers=1, hidden_size=HEADS * DIM, num_attention_heads=HEADS,
                               num_query_groups=GROUPS, kv_channels=DIM,
                               window_size=(window - 1, 0) if window else None,
                               attention_dropout=0.0, use_cpu_initialization=True)
    return LocalCoreAttention(config, 1, AttnMaskType.causal,
                              pg_collection=SimpleNamespace(cp=cp_group) if cp_group else None)


_CASES = {"causal": (None, False), "window5": (5, False), "window12_docs": (12, True),
          "docs": (None, True)}


def _compare_attention(window: int | None, documents: bool, rank: int, group) -> float:
    """Max |CP2 - cp=1| over this rank's output rows and its q/k/v gradients."""
    import torch

    from exaone_train.parallel.context import slice_for_cp_rank

    gen = torch.Generator().manual_seed(7)
    q = torch.randn(SEQ, BATCH, HEADS, DIM, generator=gen)
    k, v = (torch.randn(SEQ, BATCH, GROUPS, DIM, generator=gen) for _ in range(2))
    grad_out = torch.randn(SEQ, BATCH, HEADS * DIM, generator=gen)
    # documents of ~8 tokens: boundaries fall inside and across the 8-token CP chunks
    docs = torch.cumsum(torch.rand(BATCH, SEQ, generator=gen) < 0.12, dim=1)

    full = [t.clone().requires_grad_() for t in (q, k, v)]
    mask = (docs.unsqueeze(2) != docs.unsqueeze(1)).unsqueeze(1) if documents else None
    ref = _attention(window, None)(*full, mask)
    ref.backward(grad_out)

    def local(t, dim=0):
        return slice_for_cp_rank(t, dim, 2, rank)

    mine = [local(t).detach().requires_grad_() for t in (q, k, v)]
    local_mask = ((local(docs, 1).unsqueeze(2) != docs.unsqueeze(1)).unsqueeze(1)
                  if documents else None)
    out = _attention(window, group)(*mine, local_mask)
    out.backward(local(grad_out))
    diffs = [(out - local(ref)).abs().max()]
    diffs += [(a.grad - local(b.grad)).abs().max() for a, b in zip(mine, full, strict=True)]
    return float(torch.stack(diffs).max())


def _compare_all_attention_cases() -> dict[str, float]:
    from megatron.core import parallel_state

    from exaone_train.config.schema import ParallelConfig
    from exaone_train.parallel import state

    state.init_model_parallel(ParallelConfig(cp=2), seed=1)
    group = parallel_state.get_context_parallel_group()
    return {name: _compare_attention(*case, group.rank(), group) for name, case in _CASES.items()}


def test_cp2_attention_matches_one_process():
    """Output and dq/dk/dv (dk/dv reduce-scattered over CP) equal cp=1 attention's."""
    per_rank = run_distributed(_compare_all_attention_cases, 2)
    for name in _CASES:
        worst = max(diffs[name] for diffs in per_rank)
        assert worst <= 5e-6, f"{name}: CP2 differs from cp=1 by {worst}"
