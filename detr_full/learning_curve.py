"""A learning curve: train a config for a fixed number of steps and evaluate it every few steps.

What notebook 12 and `benchmarks/successor_fixes.py` use to put DETR and its successors' fixes side
by side on the same data, seed and step budget. It trains with the pieces of `python -m
detr_full.train` (dataset, augmentation, loader, optimizer groups, warm-up, `train_one_epoch`),
without checkpoints or a StepLR drop, and at every evaluation records
- `AP`, `AP50` (pycocotools) on the first `val_images` val images;
- the diagnosis numbers of diagnostics.py: `matching_instability` (%, from the second evaluation
  on), `box_spread`, and `val_class_error`, the class error of the matched queries;
- `train_class_error` and `train_loss`, averaged over the steps since the previous evaluation;
- `cpu_min`: this process's CPU time spent training so far (evaluations excluded), and `wall_min`.
Run it with `num_workers=0` for honest CPU minutes: a loader process's time is not this process's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import time
from pathlib import Path
from typing import Iterator, Optional

from torch import nn
from torch.utils.data import Subset

from detr_full.config import TrainConfig, model_config
from detr_full.data.coco import coco_api
from detr_full.data.loaders import train_loader, val_loader
from detr_full.data.shapes import ensure_shapes
from detr_full.detr import build_detr
from detr_full.diagnostics import MatchingMonitor
from detr_full.engine import evaluate, train_one_epoch
from detr_full.optim import LinearWarmup, build_optimizer
from detr_full.pretrain import PRETRAIN, pretrained_backbone_path
from detr_full.rng import capture_rng_state, restore_rng_state, seed_everything
from detr_full.train import dataset_for, num_classes_of, resolve_device

# make train's recipe as it was when the committed results of notebooks 12 and 13 and
# benchmarks/successor_fixes.py were made, as overrides of today's: the backbone's layer2-3 trained at
# 1e-4, the decoder's first boxes learned (no query selection, no anchor queries) and one level of
# memory. The recipe now freezes the backbone (backbone_in_loader: about 3x the steps per minute, about
# the same AP50 per step), starts its queries from the encoder's proposals (query_selection.py) and
# gives the decoder a finer level (fine_memory.py).
COMPARISON_RECIPE: dict = dict(lr_backbone=1e-4, backbone_in_loader=False, query_selection=False, selection_nms=0.0,
                               anchor_queries=False, fine_memory=False)

# The runs notebook 12 and benchmarks/successor_fixes.py compare: overrides of shapes_cpu_recipe().
# "DETR" is the recipe without its spatial prior; anchor queries and denoising build on the prior
# (their anchors are its reference boxes), so they are compared with "spatial prior"; Group DETR
# and denoising cannot be combined here (dn_groups needs num_query_groups=1), so "all" has no groups.
SUCCESSOR_FIXES: dict[str, dict] = {
    "DETR": dict(spatial_prior=False),
    "query groups (Group DETR)": dict(spatial_prior=False, num_query_groups=5),
    "focal loss (Deformable DETR)": dict(spatial_prior=False, focal_loss=True),
    "spatial prior (SMCA)": dict(spatial_prior=True),
    "+ anchor queries (DAB-DETR)": dict(spatial_prior=True, anchor_queries=True),
    "+ denoising (DN-DETR)": dict(spatial_prior=True, dn_groups=5),
    "all but groups": dict(spatial_prior=True, anchor_queries=True, dn_groups=5, focal_loss=True),
}


def _batches(dataset, cfg: TrainConfig, model: nn.Module) -> Iterator:
    """The training batches of epoch 0, then epoch 1, ...: the order `python -m detr_full.train` uses."""
    for epoch in itertools.count():
        yield from train_loader(dataset, cfg, epoch, distributed=False, model=model)


def learning_curve(cfg: TrainConfig, steps: int, eval_every: int, val_images: Optional[int] = None,
                   progress: bool = False, matcher: Optional[nn.Module] = None,
                   keep: Optional[dict] = None) -> list[dict]:
    """Train `cfg` (on `cfg.coco_path`, or data/shapes) for `steps` iterations on `cfg.device`;
    evaluate at step 0, every `eval_every` steps and at the end. Returns one dict per evaluation
    (keys in the module docstring). `cfg.pretrained_backbone="pretrain"` uses the cached pretraining
    (made first when missing; its time is not counted). `matcher` replaces the criterion's
    Hungarian matcher, in training and in the val losses (an experiment: notebook 13). `keep`, a
    dict, receives the trained `model`, `criterion`, `postprocess`, the `val_set` and `cfg` at the end."""
    if steps < 1 or eval_every < 1:
        raise ValueError(f"learning_curve needs steps >= 1 and eval_every >= 1; got {steps} and {eval_every}.")
    seed_everything(cfg.seed)
    root = Path(cfg.coco_path) if cfg.coco_path else ensure_shapes()
    if cfg.pretrained_backbone == PRETRAIN:
        cfg = dataclasses.replace(cfg, pretrained_backbone=str(pretrained_backbone_path(cfg, root)))
    ds_val, ds_train = dataset_for(cfg, "val", root), dataset_for(cfg, "train", root)
    if val_images is not None:
        ds_val = Subset(ds_val, range(min(val_images, len(ds_val))))
    cfg = dataclasses.replace(cfg, num_classes=num_classes_of(ds_train))
    device = resolve_device(cfg.device)
    model, criterion, postprocess = build_detr(model_config(cfg))
    if matcher is not None:
        criterion.matcher = matcher
    model.to(device)
    criterion.to(device)
    optimizer = build_optimizer(model, cfg)
    warmup = LinearWarmup(optimizer, cfg.warmup_steps)
    monitor, coco_gt, batches = MatchingMonitor(), coco_api(ds_val), _batches(ds_train, cfg, model)
    curve: list[dict] = []
    cpu = wall = 0.0
    done, train_stats = 0, {}
    while True:
        rng = capture_rng_state()       # evaluating must not shift the training's random streams
        with contextlib.redirect_stdout(io.StringIO()):                   # pycocotools' 12-line summary
            stats, coco_eval = evaluate(model, criterion, postprocess, val_loader(ds_val, cfg, False, model),
                                        coco_gt, device, progress=False, monitor=monitor)
        restore_rng_state(rng)
        point = {"step": done, "cpu_min": cpu / 60, "wall_min": wall / 60, "AP": coco_eval.stats[0],
                 "AP50": coco_eval.stats[1], "val_class_error": stats["class_error"], "val_loss": stats["loss"],
                 "box_spread": stats["box_spread"], "matching_instability": stats.get("matching_instability")}
        if train_stats:
            point.update(train_loss=train_stats["loss"], train_class_error=train_stats["class_error"])
        curve.append(point)
        if progress:
            unstable = point["matching_instability"]
            print(f"step {done:4d}  AP50 {point['AP50']:.3f}  class error (val) {point['val_class_error']:5.1f} %  "
                  f"matching instability {'  -  ' if unstable is None else f'{unstable:5.1f}'} %  box spread "
                  f"{point['box_spread']:.3f}  ({point['cpu_min']:.1f} CPU min)", flush=True)
        if done == steps:
            if keep is not None:
                keep.update(model=model, criterion=criterion, postprocess=postprocess, val_set=ds_val, cfg=cfg)
            return curve
        n = min(eval_every, steps - done)
        c0, w0 = time.process_time(), time.perf_counter()
        train_stats = train_one_epoch(model, criterion, itertools.islice(batches, n), optimizer, device, epoch=0,
                                      max_norm=cfg.clip_max_norm, scheduler_step=warmup.step, progress=False)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        done += n
