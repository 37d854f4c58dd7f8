"""Context parallelism on the local attention path (2 and 4 gloo processes): LocalCoreAttention
under CP2 and CP4 gives the output and the q/k/v gradients of cp=1 attention on the same
tensors, for causal, sliding-window (window crossing the chunk boundaries) and document masks:
to 5e-6 (fp32, values O(1); measured at CP2 <= 7.2e-7; a wrong position or mask is off by
> 0.1).

Which exchange runs is checked too (`halo.BYTES_SENT`): a window whose W-1 keys fit in one
chunk goes through the halo exchange and never all-gathers (window5: 4 keys, chunks of 8 at
CP2 and of 4 at CP4); global layers and windows longer than a chunk (window12) all-gather.

Training under parallel.cp=4 (dense EXAONE 4.0, MoE K-EXAONE with MTP, halo exchange,
document masks) is checked against 1 process below, in the same 4-process start as the CP4
attention; under parallel.cp=2 (with and without document masks) in test_trainer_layouts.py,
which holds the shared 1-process references and tolerances.
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


_CASES = {"causal": (None, False), "window5": (5, False), "window5_docs": (5, True),
          "window12_docs": (12, True), "docs": (None, True)}
_HALO = {"window5", "window5_docs"}  # W-1 = 4 keys fit one chunk at CP2 (8) and CP4 (4)


def _compare_attention(window: int | None, documents: bool, group) -> tuple[float, dict]:
    """Max |CP - cp=1| over this rank's output rows and its q/k/v gradients, and the bytes
    this rank sent by kind (halo / all_gather)."""
    import torch

    from exaone_train.parallel.context import slice_for_cp_rank
    from exaone_train.parallel.halo import BYTES_SENT

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
        return slice_for_cp_rank(t, dim, group.size(), group.rank())

    mine = [local(t).detach().requires_grad_() for t in (q, k, v)]
    local_mask = ((local(docs, 1).unsqueeze(2) != docs.unsqueeze(1)).unsqueeze(1)
                  if documents else None)
    BYTES_SENT.clear()
    out = _attention(window, group)(*mine, local_mask)
    out.backward(local(grad_out))
    diffs = [(out - local(ref)).abs().max()]
    diffs += [(a.grad - local(b.grad)).abs().max() for a, b in zip(mine, full, strict=True)]
    return float(torch.stack(diffs).max()), dict(BYTES_SENT)


def _compare_all_attention_cases(cp: int) -> dict[str, tuple[float, dict]]:
    from megatron.core import parallel_state

    from exaone_train.config.schema import ParallelConfig
    from exaone_train.parallel import state

    state.init_model_parallel(ParallelConfig(cp=cp), seed=1)
    group = parallel_state.get_context_parallel_group()
    return {name: _compare_attention(*case, group) for name, case in _CASES.items()}


def _check_attention(per_rank: list[dict], cp: int) -> None:
    for name in _CASES:
        worst = max(result[name][0] for result in per_rank)
        assert worst <= 5e-6, f"{name}: CP{cp} differs from cp=1 by {worst}"
        sent = [result[name][1] for result in per_rank]
        if name in _HALO:  # every rank sends a halo (rank 0 one tail, the others two)
            assert all(s.get("halo", 0) > 0 and not s.get("all_gather") for s in sent), sent
        else:
            assert all(s.get("all_gather", 0) > 0 and not s.get("halo") for s in sent), sent


def test_cp2_attention_matches_one_process():
    """Output and dq/dk/dv (dk/dv returned to their owners over CP) equal cp=1 attention's;
    windows that fit a chunk exchange only the halo."""
    _check_attention(run_distributed(_compare_all_attention_cases, 2, 2), 2)


# CP4 training: 64 tokens in 8 chunks of 8; a window of 8 tokens (halo 7) crosses every chunk
# boundary and fits one chunk, so the sliding layers exchange halos; documents of 16-32 tokens
# (train.document_attention_mask defaults to true) span several chunks and ranks.
CP4_MODELS = ("tiny_exaone4", "tiny_kexaone")  # dense; MoE + MTP
CP4_RUN = ("model.sliding_window_tokens=8", "train.train_steps=3")


def _train_models(run_dir: str, init_dirs: dict | None) -> dict:
    """Each CP4 model trained in this process: the 1-process reference (saving its initial
    weights) when `init_dirs` is None, else from those weights under parallel.cp=4."""
    from exaone_train.parallel.halo import BYTES_SENT
    from tests.dist.test_trainer_layouts import _train

    results = {}
    for model in CP4_MODELS:
        overrides = [f"model={model}", *CP4_RUN]
        if init_dirs is not None:
            overrides += [f"train.init_from={init_dirs[model]}", "parallel.cp=4"]
        BYTES_SENT.clear()
        losses = _train(f"{run_dir}/{model}", overrides, save_init=init_dirs is None)
        results[model] = (losses, dict(BYTES_SENT))
    return results


def _cp4_attention_and_training(run_dir: str, init_dirs: dict) -> tuple[dict, dict]:
    """One 4-process start for both checks (each start imports megatron-core four times)."""
    return _compare_all_attention_cases(4), _train_models(run_dir, init_dirs)


def test_cp4_attention_and_training_match_one_process(tmp_path):
    """CP4 attention equals cp=1 attention (as CP2 above), and 3 training steps of dense
    EXAONE 4.0 and MoE K-EXAONE with MTP under parallel.cp=4, halo exchange and document masks
    give the 1-process losses and step-0 grad norm (test_trainer_layouts' tolerances)."""
    from tests.dist.test_trainer_layouts import assert_same_run

    single = str(tmp_path / "single")
    references = run_distributed(_train_models, 1, single, None)[0]
    init_dirs = {m: f"{single}/{m}/init" for m in CP4_MODELS}
    per_rank = run_distributed(_cp4_attention_and_training, 4, str(tmp_path / "cp4"), init_dirs)
    _check_attention([attention for attention, _ in per_rank], 4)
    for model in CP4_MODELS:
        runs = [training[model] for _, training in per_rank]
        assert all(losses == runs[-1][0] for losses, _ in runs), "every rank reports the same"
        assert_same_run(references[model][0], runs[-1][0], f"{model} cp4")
        # sliding layers went through the halo; the global layer all-gathered
        assert all(sent.get("halo", 0) > 0 and sent.get("all_gather", 0) > 0
                   for _, sent in runs), [sent for _, sent in runs]
