"""The training and validation loaders of a run: the order, the batches and the workers' seeds.

The training order depends only on `(seed, epoch)` (and the rank), so an exact resume needs no
sampler state; with `aspect_ratio_grouping` the batches hold images of one orientation (less
padding); with `backbone_in_loader` the workers also run the model's frozen ResNet (collate.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
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


def batch_collate(cfg: TrainConfig, model: Optional[nn.Module]):
    """The loaders' collate: pad the images, and with `backbone_in_loader` also run `model`'s frozen
    ResNet on them in the workers (data/collate.py: BackboneCollate). Without workers
    (`num_workers=0`) or with the model on a GPU, the model runs its ResNet itself: the same
    numbers, and nothing to gain."""
    if not cfg.backbone_in_loader or cfg.num_workers == 0:
        return collate_fn
    if model is None:
        raise ValueError("backbone_in_loader: pass the model to the loader (train_loader(..., model=model)); "
                         "its workers run the model's frozen ResNet.")
    backbone = (model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model).backbone[0]
    if next(backbone.parameters()).device.type != "cpu":
        return collate_fn               # on a GPU the model's own ResNet is faster than the CPU workers
    return BackboneCollate(backbone)


def train_loader(dataset, cfg: TrainConfig, epoch: int, distributed: bool,
                 model: Optional[nn.Module] = None) -> DataLoader:
    """Shuffled batches for one epoch (`model`: only read with `backbone_in_loader`)."""
    sampler = train_sampler(dataset, cfg, epoch, distributed)
    if cfg.aspect_ratio_grouping:
        batches = GroupedBatchSampler(sampler, aspect_ratios(dataset), cfg.batch_size)
    else:
        batches = BatchSampler(sampler, cfg.batch_size, drop_last=True)
    # The loader's generator seeds the workers' augmentation RNGs: also a function of (seed, epoch, rank).
    generator = torch.Generator().manual_seed(cfg.seed + epoch + 1_000_003 * get_rank())
    return DataLoader(dataset, batch_sampler=batches, collate_fn=batch_collate(cfg, model),
                      num_workers=cfg.num_workers, generator=generator)


def val_loader(dataset, cfg: TrainConfig, distributed: bool, model: Optional[nn.Module] = None) -> DataLoader:
    sampler = DistributedSampler(dataset, shuffle=False) if distributed else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                      collate_fn=batch_collate(cfg, model), num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(cfg.seed))
