"""Ownership table of the layer-wise distributed optimizer (optim/layer_wise.py): whole
parameters, balanced by element count, the same on every rank."""

from exaone_train.optim.layer_wise import _buckets, assign_owners


def test_owners_balance_by_size_largest_first():
    numels = [100, 1, 1, 60, 50, 1, 10]
    owners = assign_owners(numels, 2)
    loads = [sum(n for n, o in zip(numels, owners, strict=True) if o == r) for r in range(2)]
    assert owners[0] == 0 and owners[3] == 1 and owners[4] == 1  # 100 | 60 + 50
    assert loads == [112, 111]
    assert assign_owners(numels, 2) == owners  # deterministic
    assert assign_owners(numels, 1) == [0] * len(numels)


def test_every_rank_gets_parameters_when_there_are_enough():
    owners = assign_owners([7] * 10 + [3] * 5, 4)
    assert sorted(set(owners)) == [0, 1, 2, 3]
    assert assign_owners([5, 5], 4) == [0, 1]  # ranks 2 and 3 own nothing


def test_buckets_keep_order_and_put_a_large_tensor_alone():
    import torch

    ts = [torch.empty(n) for n in (2, 2, 9, 1, 1, 1)]
    sizes = [[t.numel() for t in b] for b in _buckets(ts, 4)]
    assert sizes == [[2, 2], [9], [1, 1, 1]]
    assert _buckets([], 4) == []
