"""The load-balanced CP layout: rank r holds chunks r and 2*cp-1-r of 2*cp (what megatron-core's
RoPE slices), and `collate` gives each CP rank its rows of the cp=1 micro-batch."""

import numpy as np
import pytest
import torch

from exaone_train.parallel.context import load_balanced_positions
from exaone_train.train.step import collate
from exaone_train.train.synthetic import SyntheticStageDataset


class _Group:
    """What get_pos_emb_on_this_cp_rank asks of a process group."""

    def __init__(self, size: int, rank: int) -> None:
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


@pytest.mark.parametrize("cp", [2, 3])
def test_positions_are_the_rows_megatron_rope_keeps(cp):
    from megatron.core.models.common.embeddings.rope_utils import get_pos_emb_on_this_cp_rank

    from exaone_train.parallel import cpu_support

    cpu_support.install()  # megatron stages the chunk indices in pinned memory, then .cuda()
    pos_emb = torch.arange(48.0).view(48, 1, 1, 1)
    seen = []
    for r in range(cp):
        ours = load_balanced_positions(48, cp, r)
        megatron = get_pos_emb_on_this_cp_rank(pos_emb, 0, _Group(cp, r))
        assert megatron.flatten().long().tolist() == ours.tolist()
        seen += ours.tolist()
    assert sorted(seen) == list(range(48))  # every position on exactly one rank


def test_positions_refuse_indivisible_length():
    with pytest.raises(ValueError, match="2\\*cp=4"):
        load_balanced_positions(30, 2, 0)


def test_collate_gives_each_cp_rank_its_rows():
    data = SyntheticStageDataset(seq_length=32, vocab_size=4096, seed=3, min_doc_tokens=5)
    samples = [data[i] for i in range(2)]
    full = collate(samples, document_mask=True)
    for r in range(2):
        part = collate(samples, document_mask=True, cp_size=2, cp_rank=r)
        rows = load_balanced_positions(32, 2, r)
        for name in ("input_ids", "labels", "loss_mask", "position_ids"):
            assert torch.equal(getattr(part, name), getattr(full, name)[:, rows]), name
        # document ids of every position in global order on every rank (the attention
        # picks its query rows and key columns); no [s/cp, s] mask
        assert part.attention_mask.shape == (2, 32)
        assert torch.equal(part.attention_mask, full.attention_mask)
    expected = np.stack([s.document_ids for s in samples])
    assert np.array_equal(full.attention_mask.numpy(), expected)
    assert len(np.unique(expected)) > 1  # the samples do hold several documents


# ---- THD packing for the Transformer Engine path (issue 17 item 1) ---------------------------

@pytest.mark.parametrize("cp", [2, 4])
def test_thd_partition_is_the_load_balanced_layout_of_every_sequence(cp):
    """Our port of TE's thd_get_partitioned_indices against the sbhd layout applied to each
    packed sequence alone: rank r holds chunks r and 2cp-1-r of EVERY sequence."""
    from exaone_train.parallel.context import thd_partitioned_indices

    lengths = torch.tensor([4, 12, 8, 24]) * cp // 2  # each divisible by 2*cp
    cu = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    seen = []
    for r in range(cp):
        ours = thd_partitioned_indices(cu.to(torch.int32), int(cu[-1]), cp, r)
        expected = torch.cat([load_balanced_positions(int(n), cp, r) + int(start)
                              for n, start in zip(lengths, cu[:-1], strict=True)])
        assert ours.tolist() == expected.tolist()
        seen += ours.tolist()
    assert sorted(seen) == list(range(int(cu[-1])))  # every token on exactly one rank
    with pytest.raises(ValueError, match="divisible by 2\\*cp"):
        thd_partitioned_indices(torch.tensor([0, 6, 6 + 4 * cp]), 6 + 4 * cp, cp, 0)


def _thd_samples():
    # documents of 5-16 tokens: lengths that are not multiples of 2*cp, so padding is needed
    data = SyntheticStageDataset(seq_length=32, vocab_size=4096, seed=3, min_doc_tokens=5)
    return [data[i] for i in range(2)]


def _pack(samples, cp: int, rank: int, tp_split: int = 1):
    return collate(samples, document_mask=True, cp_size=cp, cp_rank=rank, thd_tp_split=tp_split)


@pytest.mark.parametrize("cp, tp_split", [(1, 1), (2, 1), (2, 4), (4, 1)])
def test_thd_pack_holds_the_documents_the_local_path_masks(cp, tp_split):
    """cu_seqlens cut the pack exactly where the local path's document mask does: the real
    tokens of each packed sequence are one document's, in order; two real tokens share a
    packed sequence iff the local mask lets them share a document. Padding closes each
    sequence to a multiple of 2*cp (and the pack to cp*tp), with labels and loss mask 0."""
    samples = _thd_samples()
    local = collate(samples, document_mask=True)  # [b, s] batch + document ids
    whole = _pack(samples, 1, 0) if cp == 1 else None
    parts = [_pack(samples, cp, r, tp_split) for r in range(cp)]
    params = parts[0].packed_seq_params
    cu = params.cu_seqlens_q.long()
    lengths, total = cu[1:] - cu[:-1], int(cu[-1])
    assert params.qkv_format == "thd" and torch.equal(params.cu_seqlens_q_padded, cu.int())
    assert params.max_seqlen_q == int(lengths.max())
    assert bool((lengths % (2 * cp if cp > 1 else 1) == 0).all()) and total % (cp * tp_split) == 0
    # the pack in global order: undo the CP partition (every rank holds T / cp tokens)
    pack = {}
    for name in ("input_ids", "labels", "loss_mask", "position_ids", "padding_mask"):
        flat = torch.zeros(total, dtype=getattr(parts[0], name).dtype)
        for r, part in enumerate(parts):
            assert part.packed_seq_params.cu_seqlens_q.tolist() == cu.tolist()
            assert getattr(part, name).shape == (1, total // cp)
            index = torch.cat([load_balanced_positions(int(n), cp, r) + int(s)
                               for n, s in zip(lengths, cu[:-1], strict=True)]) if cp > 1 else \
                torch.arange(total)
            flat[index] = getattr(part, name)[0]
        pack[name] = flat
    if whole is not None:
        assert torch.equal(whole.input_ids[0], pack["input_ids"])
    sequence = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    assert torch.equal(pack["position_ids"], torch.arange(total) - cu[sequence])
    real = pack["loss_mask"] > 0  # synthetic samples have loss on every real token
    assert int(real.sum()) == local.loss_mask.numel()
    assert torch.equal(pack["input_ids"][real], local.input_ids.reshape(-1))
    assert torch.equal(pack["labels"][real], local.labels.reshape(-1))
    assert bool((pack["labels"][~real] == 0).all() and (pack["input_ids"][~real] == 0).all())
    assert torch.equal(pack["padding_mask"], ~real)  # what the MoE routers leave out
    # real tokens before padding inside each sequence (causal attention never sees padding)
    assert bool((pack["position_ids"][real] < lengths[sequence][real]).all())
    docs = local.attention_mask.long()
    sample = torch.arange(docs.shape[0]).repeat_interleave(docs.shape[1])
    same_doc = (docs.reshape(-1)[:, None] == docs.reshape(-1)[None]) & \
        (sample[:, None] == sample[None])  # the local path's document mask
    seq_real = sequence[real]
    assert torch.equal(seq_real[:, None] == seq_real[None], same_doc)
    assert (lengths > 0).all() and len(docs.unique()) > 2


def test_thd_batch_moves_its_cu_seqlens():
    """Batch.to moves the pack's cu_seqlens with the tensors (TE reads them on the GPU)."""
    b = _pack(_thd_samples(), 2, 0).to(torch.device("meta"))
    assert b.input_ids.device.type == "meta"
    assert b.packed_seq_params.cu_seqlens_q.device.type == "meta"
    assert b.packed_seq_params.qkv_format == "thd"
