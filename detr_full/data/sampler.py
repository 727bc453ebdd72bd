"""Aspect-ratio grouping: batches of images with similar shapes, so padding wastes less compute.

A batch is padded to its largest height and largest width (`collate.pad_images`): a portrait image
beside a landscape one makes a square batch of which almost half is padding, and the backbone and
the encoder pay for every padded pixel. The official DETR batches in random order; torchvision's
detection references group by aspect ratio, as done here. Not in the official code: off by default
(`TrainConfig.aspect_ratio_grouping`).

The order stays a function of the wrapped sampler's order (thus of seed and epoch), so resume is
still exact. Each group yields only full batches, like `BatchSampler(drop_last=True)`: at most
`batch_size - 1` images per group are left out of an epoch.
"""

from __future__ import annotations

import bisect
from typing import Iterator, Sequence

from torch.utils.data import Sampler

# Group boundaries on width / height: tall, portrait, landscape, wide.
ASPECT_BOUNDARIES = (0.75, 1.0, 1.333)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices from `sampler`, each drawn from one aspect-ratio group.

    aspect_ratios[i] = width / height of dataset item i. Indices are taken in the sampler's order
    and a batch is yielded as soon as its group holds `batch_size` of them.
    """

    def __init__(self, sampler: Sampler[int], aspect_ratios: Sequence[float], batch_size: int,
                 boundaries: Sequence[float] = ASPECT_BOUNDARIES):
        self.sampler, self.batch_size = sampler, batch_size
        self.group_of = [bisect.bisect_right(boundaries, r) for r in aspect_ratios]
        self.num_groups = len(boundaries) + 1

    def __iter__(self) -> Iterator[list[int]]:
        buckets: list[list[int]] = [[] for _ in range(self.num_groups)]
        for index in self.sampler:
            bucket = buckets[self.group_of[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()

    def __len__(self) -> int:
        # Exact, so it walks the sampler's order, which for a RandomSampler draws from its generator:
        # put the generator back, or asking the length would change the epoch's order.
        generator = getattr(self.sampler, "generator", None)
        state = generator.get_state() if generator is not None else None
        counts = [0] * self.num_groups
        for index in self.sampler:
            counts[self.group_of[index]] += 1
        if state is not None:
            generator.set_state(state)
        return sum(c // self.batch_size for c in counts)


def aspect_ratios(dataset) -> list[float]:
    """width / height of every item of a CocoDetection, from its annotation file (no image is read)."""
    return [dataset.coco.imgs[i]["width"] / dataset.coco.imgs[i]["height"] for i in dataset.ids]
