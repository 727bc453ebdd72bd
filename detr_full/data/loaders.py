"""The training and validation loaders of a run: the order, the batches and the workers' seeds.

The training order depends only on `(seed, epoch)` (and the rank), so an exact resume needs no
sampler state; with `aspect_ratio_grouping` the batches hold images of one orientation (less
padding); given `features` (`backbone_in_loader`), the workers also run the model's frozen ResNet
(collate.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from detr_full.config import TrainConfig
from detr_full.distributed import get_rank

from .collate import BackboneCollate, collate_fn
from .sampler import GroupedBatchSampler, aspect_ratios


def train_sampler(dataset, cfg: TrainConfig, epoch: int, distributed: bool):
    """Shuffled order that depends only on (seed, epoch): exact resume needs no sampler state."""
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        return sampler
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed + epoch))


def batch_collate(features: Optional[Callable[[Tensor, Tensor], Any]], pad_to: int = 1):
    """The loaders' collate: pad the images (to a multiple of `pad_to`), and given `features` (the frozen
    backbone's `run`, from the run setup) also run it on them in the workers (data/collate.py)."""
    if features is not None:
        return BackboneCollate(features, pad_to)
    return collate_fn if pad_to == 1 else functools.partial(collate_fn, pad_to=pad_to)


def train_loader(dataset, cfg: TrainConfig, epoch: int, distributed: bool,
                 features: Optional[Callable[[Tensor, Tensor], Any]] = None, pin_memory: bool = False) -> DataLoader:
    """Shuffled batches for one epoch; `features`: see batch_collate; `pin_memory`: page-locked batches,
    which a GPU copies without making the host wait."""
    sampler = train_sampler(dataset, cfg, epoch, distributed)
    if cfg.aspect_ratio_grouping:
        batches = GroupedBatchSampler(sampler, aspect_ratios(dataset), cfg.batch_size)
    else:
        batches = BatchSampler(sampler, cfg.batch_size, drop_last=True)
    # The loader's generator seeds the workers' augmentation RNGs: also a function of (seed, epoch, rank).
    generator = torch.Generator().manual_seed(cfg.seed + epoch + 1_000_003 * get_rank())
    return DataLoader(dataset, batch_sampler=batches, collate_fn=batch_collate(features, cfg.pad_to),
                      num_workers=cfg.num_workers, generator=generator, pin_memory=pin_memory)


def val_loader(dataset, cfg: TrainConfig, distributed: bool,
               features: Optional[Callable[[Tensor, Tensor], Any]] = None, pin_memory: bool = False) -> DataLoader:
    sampler = DistributedSampler(dataset, shuffle=False) if distributed else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                      collate_fn=batch_collate(features, cfg.pad_to), num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(cfg.seed), pin_memory=pin_memory)
