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
