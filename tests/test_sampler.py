"""detr_full.data.sampler: aspect-ratio grouped batches."""

import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from detr_full.data.sampler import GroupedBatchSampler


def test_batches_hold_one_group_each_and_length_is_exact():
    ratios = [0.5, 2.0, 0.9, 1.2, 0.5, 2.0, 1.1, 0.6, 3.0, 0.7, 1.0, 1.5]  # groups 0, 3, 1, 2, 0, 3, 2, 0, 3, 0, 2, 3
    sampler = RandomSampler(range(len(ratios)), generator=torch.Generator().manual_seed(0))
    batches = list(GroupedBatchSampler(sampler, ratios, batch_size=2))
    groups = GroupedBatchSampler(sampler, ratios, 2).group_of
    assert groups == [0, 3, 1, 2, 0, 3, 2, 0, 3, 0, 2, 3]
    assert all(groups[a] == groups[b] for a, b in batches)
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))                              # no image twice
    # groups of sizes 4, 1, 3, 4 -> 2 + 0 + 1 + 2 full batches of 2
    assert len(batches) == len(GroupedBatchSampler(sampler, ratios, 2)) == 5


def test_by_hand_on_a_sequential_order():
    ratios = [0.5, 2.0, 0.5, 0.5, 2.0, 2.0]
    batches = list(GroupedBatchSampler(SequentialSampler(ratios), ratios, batch_size=2))
    assert batches == [[0, 2], [1, 4]]                                # 3 and 5 wait for a partner: dropped


def test_one_group_is_the_plain_batch_sampler():
    ratios = [1.5] * 10

    def sampler():  # a fresh generator each time: the same permutation
        return RandomSampler(ratios, generator=torch.Generator().manual_seed(3))

    assert list(GroupedBatchSampler(sampler(), ratios, 3)) == list(BatchSampler(sampler(), 3, drop_last=True))


def test_asking_the_length_does_not_change_the_order():
    ratios = [0.5, 2.0, 0.9, 1.2, 0.5, 2.0, 1.1, 0.6]
    sampler = RandomSampler(ratios, generator=torch.Generator().manual_seed(1))
    grouped = GroupedBatchSampler(sampler, ratios, 2)
    expected = list(GroupedBatchSampler(RandomSampler(ratios, generator=torch.Generator().manual_seed(1)), ratios, 2))
    len(grouped)
    assert list(iter(grouped)) == expected
