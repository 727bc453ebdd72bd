"""What a training run is made of before its first step, built from its config in one place.

`setup_run(cfg)` gives a `Run`: the data set's splits at the run's image sizes (the shapes set is
generated on first use), the class count (max category id + 1, from the annotations), the
pretrained backbone (`pretrained_backbone="pretrain"`: made and cached on first use), the model,
criterion and post-processor, the optimizer (the official two parameter groups), the StepLR and the
warm-up, and what the loader's workers run (`backbone_in_loader`). `python -m detr_full.train`,
learning_curve.py and the benchmarks all start here.

One run, one result: preparing the data and the backbone may draw random numbers or not (a cached
backbone is only checked; a missing one is trained), so the random streams are seeded again right
before the model is built. `make train` from nothing, after a kill, or on a machine that already
has the cache starts training from the same weights and streams (tests/test_run_setup.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from detr_full.build import build_detr
from detr_full.config import PRETRAIN, ConfigError, TrainConfig, check_config, model_config, parse_scales
from detr_full.criterion import SetCriterion
from detr_full.data.coco import CocoDetection, build_dataset, category_names, num_classes_of
from detr_full.data.loaders import train_loader, val_loader
from detr_full.data.shapes import ensure_shapes
from detr_full.data.trees import DEFAULT_ROOT as TREES_ROOT, ensure_trees
from detr_full.detr import DETR
from detr_full.distributed import all_gather_object, get_rank, is_main_process
from detr_full.optim import LinearWarmup, build_optimizer
from detr_full.postprocess import PostProcess
from detr_full.pretrain import pretrained_backbone_path
from detr_full.rng import seed_everything


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when available, else the CPU; anything else as torch.device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was requested but CUDA is not available on this machine. "
                          "Use --device auto or --device cpu.")
    return device


def prepared_dataset(coco_path: Optional[Union[str, Path]]) -> str:
    """`coco_path`, made first when it is a data set the project makes itself and it is missing: None
    (data/shapes, generated) or data/trees (cut from the deepforest wheel's photographs)."""
    if coco_path is None:
        return str(ensure_shapes())
    if Path(coco_path).resolve() == TREES_ROOT.resolve():
        return str(ensure_trees())
    return str(coco_path)


def dataset_for(cfg: TrainConfig, image_set: str, coco_path: Union[str, Path]) -> CocoDetection:
    """`image_set` ("train" | "val") of the COCO-layout folder `coco_path`, at the run's image sizes
    (`scales`, `max_size`, `val_size`)."""
    return build_dataset(image_set, coco_path, scales=parse_scales(cfg.scales), max_size=cfg.max_size,
                         val_size=cfg.val_size)


@dataclass
class Run:
    cfg: TrainConfig                    # as run: num_classes derived, pretrained_backbone a path
    coco_path: Path
    device: torch.device
    val_set: CocoDetection
    train_set: Optional[CocoDetection]  # None with cfg.eval
    extra_val_set: Optional[CocoDetection]  # cfg.extra_val's split, or None
    categories: dict[int, str]          # {category id: name}
    model: DETR                         # on `device`; not wrapped for DDP
    criterion: SetCriterion
    postprocess: PostProcess
    optimizer: torch.optim.AdamW
    lr_scheduler: torch.optim.lr_scheduler.StepLR
    warmup: LinearWarmup
    loader_features: Optional[Callable[[Tensor, Tensor], Any]]  # what the loader's workers run (backbone_in_loader)
    log_every: int                      # train_one_epoch's: read the logged values back every N steps
    pretrain_wall_s: float = 0.0        # the backbone pretraining this setup ran (0: cached or none)
    pretrain_cpu_s: float = 0.0

    def train_loader(self, epoch: int, distributed: bool = False, dataset=None):
        """The training batches of `epoch` (of `dataset`, default the train split), in pinned memory for a GPU."""
        return train_loader(self.train_set if dataset is None else dataset, self.cfg, epoch, distributed,
                            self.loader_features, pin_memory=self.device.type == "cuda")

    def val_loader(self, distributed: bool = False, dataset=None):
        """The validation batches (of `dataset`, default the val split)."""
        return val_loader(self.val_set if dataset is None else dataset, self.cfg, distributed, self.loader_features,
                          pin_memory=self.device.type == "cuda")


def setup_run(cfg: TrainConfig, derive_num_classes: Optional[bool] = None, device: Optional[torch.device] = None,
              pretrain_cache: Optional[Union[str, Path]] = None, log: Callable[[str], None] = print) -> Run:
    """Build everything `cfg` describes (see the module docstring); in a distributed run, rank 0
    generates the data and pretrains the backbone while the others wait.

    `derive_num_classes`: take num_classes from the annotations; None derives it when cfg.num_classes
    is left at its default (91; the derivation gives 91 on COCO as well), False only checks that it
    is large enough. `pretrain_cache`: where the pretrained backbone is cached (default data/pretrained).
    """
    check_config(cfg)
    device = device or resolve_device(cfg.device)
    main_process = is_main_process()
    seed_everything(cfg.seed + get_rank())

    coco_path = prepared_dataset(cfg.coco_path) if main_process else None
    coco_path = all_gather_object(coco_path)[0]  # other ranks wait for rank 0 to make the data
    if cfg.coco_path is None:
        log(f"No --coco_path: using the synthetic shapes dataset in {coco_path}")
    val_set = dataset_for(cfg, "val", coco_path)
    train_set = None if cfg.eval else dataset_for(cfg, "train", coco_path)
    extra_val_set = dataset_for(cfg, cfg.extra_val, coco_path) if cfg.extra_val else None
    reference_set = val_set if train_set is None else train_set
    needed = max(num_classes_of(split) for split in (val_set, train_set) if split is not None)   # max id + 1
    if derive_num_classes is None:
        derive_num_classes = cfg.num_classes == TrainConfig.num_classes
    if derive_num_classes:
        cfg = dataclasses.replace(cfg, num_classes=needed)
    elif cfg.num_classes < needed:
        raise ConfigError(f"--num_classes {cfg.num_classes} is too small: the annotations use category ids up "
                          f"to {needed - 1}, so num_classes must be at least {needed} (max id + 1). Omit "
                          "--num_classes to derive it.")

    pretrain_wall = pretrain_cpu = 0.0
    if cfg.pretrained_backbone == PRETRAIN:
        # A resumed or fine-tuned run takes its backbone from its checkpoint: there is nothing to pretrain.
        weights_come_from_checkpoint = bool(cfg.resume or cfg.finetune_from)
        wall, cpu = time.perf_counter(), time.process_time()
        path = "" if weights_come_from_checkpoint else (
            str(pretrained_backbone_path(cfg, coco_path, pretrain_cache)) if main_process else None)
        pretrain_wall, pretrain_cpu = time.perf_counter() - wall, time.process_time() - cpu
        cfg = dataclasses.replace(cfg, pretrained_backbone=all_gather_object(path)[0])

    seed_everything(cfg.seed + get_rank())      # whatever happened above leaves no trace in the run
    model, criterion, postprocess = build_detr(model_config(cfg))
    criterion.validate_targets = False          # the loaders' collate checks them on the host (targets.py)
    model.to(device)
    criterion.to(device)
    optimizer = build_optimizer(model, cfg)
    return Run(cfg=cfg, coco_path=Path(coco_path), device=device, val_set=val_set, train_set=train_set, extra_val_set=extra_val_set,
               categories=category_names(reference_set), model=model, criterion=criterion,
               postprocess=postprocess, optimizer=optimizer,
               lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop),
               warmup=LinearWarmup(optimizer, cfg.warmup_steps), loader_features=loader_features(cfg, model, device),
               log_every=cfg.log_every or (20 if device.type == "cuda" else 1),   # reads are free on the CPU
               pretrain_wall_s=pretrain_wall, pretrain_cpu_s=pretrain_cpu)


def loader_features(cfg: TrainConfig, model: DETR, device: torch.device) -> Optional[Callable[[Tensor, Tensor], Any]]:
    """With `backbone_in_loader`: the frozen ResNet's `run`, for the loader's workers (data/collate.py).
    None without workers (the model runs its ResNet itself: the same numbers, nothing to gain) or on a
    GPU (the model's own ResNet is faster there than the CPU workers)."""
    if not cfg.backbone_in_loader or cfg.num_workers == 0 or device.type != "cpu":
        return None
    backbone = model.backbone[0]
    if not backbone.frozen:
        raise ConfigError("backbone_in_loader needs a frozen backbone (lr_backbone <= 0 and frozen_bn=True): the "
                          "loader's workers run a copy of it, which would fall behind a backbone being trained.")
    return backbone.run
