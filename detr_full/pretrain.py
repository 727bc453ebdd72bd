"""Backbone pretraining on a detection dataset's own labels: the course's ImageNet.

DETR never trains its ResNet from scratch: the paper starts from ImageNet weights, and even from
those, small data sets are hard (facebookresearch/detr#125: zero AP after 300 epochs on about 2,000
images; the course's own first recipe, from random init, stayed below AP50 0.02). This machine
cannot download ImageNet weights, and a learner on a laptop should not need them, so we pretrain
the same ResNet on a classification task made from the training set's annotations:

- task "objects" (ImageNet-like): one crop around each annotated object, cut at the scale DETR
  will see it (the image resized to a `short_side` of DETR's input size, x0.7-1.4), the object
  anywhere inside, flipped half the time; single-label cross-entropy over the dataset's
  categories. Scale matters: features trained on objects of one size do not fire on the same
  shapes twice as large, and DETR's images hold every size;
- task "multilabel": whole images, letterboxed to a square; which categories are present,
  multi-label BCE (image-level labels, the weakest supervision a detection set offers).

Only the layers DETR will use are trained (`stride` 16 stops after layer3), with trainable BN;
DETR then loads them like torchvision's ImageNet weights (`pretrained_backbone=<path>`) and, as
in the paper, freezes the BN statistics and the stem.

    python -m detr_full.pretrain                        # data/shapes -> data/pretrained/<name>.pth
    python -m detr_full.pretrain --coco_path data/other --task multilabel --steps 800

`ensure_pretrained(coco_path, cfg)` is the cached entry point used by `--pretrained_backbone
pretrain`: the weights are made on first use and reused after, keyed by the config and the
training annotations and `REVISION`; a cache file that does not load is rebuilt, never used.
Deterministic from `seed` on CPUs of one kind: it always runs on `THREADS` threads, because torch
splits its sums differently over another number of threads and 300 steps carry the rounding into
other weights (measured on shapes: val accuracy 0.958 on one thread, 0.973 on two).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align
from tqdm.auto import tqdm

from detr_full.backbone import Backbone, check_backbone_weights
from detr_full.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detr_full.config import PRETRAIN_TASKS, TrainConfig, config_from_args
from detr_full.data.coco import DatasetError, load_rgb, read_annotation_json, validate_coco
from detr_full.data.prepared import maker_lock
from detr_full.data.shapes import DEFAULT_ROOT, ensure_shapes
from detr_full.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PathLike = Union[str, Path]
DEFAULT_CACHE = DEFAULT_ROOT.parent / "pretrained"   # <repo>/data/pretrained, beside data/shapes
# Part of the cache key. Bump it whenever this code pretrains other weights from the same config and
# data (tests/test_pretrain.py pins what this revision gives and fails when that changes): otherwise
# weights made by the old code are found under the new code's name and silently reused.
REVISION = 3
# Pretraining runs on this many torch threads, whatever the caller set (OMP_NUM_THREADS=1 under the
# tests, all cores in JupyterLab), so that every caller makes the same weights; restored afterwards.
THREADS = 2


@dataclass
class PretrainConfig:
    backbone: str = "resnet18"      # the ResNet DETR will use
    stride: int = 16                # train the stages DETR keeps: 16 = up to layer3 (DETRConfig.backbone_stride)
    task: str = "objects"           # "objects" (a crop per object, single label) or "multilabel" (whole images)
    steps: int = 600                # optimiser steps
    batch_size: int = 32
    lr: float = 2e-3                # AdamW; a cosine decay to 0 over `steps` after the warm-up
    weight_decay: float = 1e-4
    warmup_steps: int = 50          # linear warm-up: a random network at full lr from step 0 is fragile
    crop_size: int = 64             # "objects": crops are crop_size x crop_size ...
    short_side: int = 160           # ... cut from the image as if resized to this short side (DETR's val_size)
    image_size: int = 128           # "multilabel": images letterboxed to image_size x image_size
    seed: int = 0


class BackboneClassifier(nn.Module):
    """A detr_full Backbone (trainable BN, stem included) + global average pool + linear classifier.

    `self.backbone.body` has torchvision's key names (conv1.*, layer1.*), so its state_dict is what
    `Backbone(pretrained=path)` loads.
    """

    def __init__(self, name: str, stride: int, num_classes: int):
        super().__init__()
        self.backbone = Backbone(name, frozen_bn=False, train_stem=True, stride=stride)
        self.fc = nn.Linear(self.backbone.num_channels, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) normalised -> logits (B, num_classes)."""
        features = self.backbone.body(images.contiguous(memory_format=torch.channels_last))  # (B, C, h, w)
        return self.fc(features.mean(dim=(2, 3)))                                            # (B, N)


# ----------------------------------------------------------------------------- the classification data

class ClassificationSet:
    """A COCO-layout split decoded once into memory, served as classification batches.

    objects: `objects` (M, 7) float = [image index, x0, y0, x1, y1 (absolute xyxy), class index,
    the image's short side];
    images: uint8 (3, H, W) tensors; labels index `category_ids` (sorted COCO ids).
    """

    def __init__(self, coco_path: PathLike, split: str, category_ids: Optional[list[int]] = None):
        root = Path(coco_path)
        ann_file = root / "annotations" / f"instances_{split}2017.json"
        data = read_annotation_json(ann_file)
        validate_coco(data, ann_file)
        self.category_ids = category_ids or sorted(int(c["id"]) for c in data["categories"])
        index_of = {cid: i for i, cid in enumerate(self.category_ids)}
        image_index = {img["id"]: i for i, img in enumerate(data["images"])}
        short = [min(img["width"], img["height"]) for img in data["images"]]
        self.images = [torch.from_numpy(_pixels(root / f"{split}2017" / img["file_name"]))
                       for img in data["images"]]                                       # (3, H, W) uint8 each
        self.labels = torch.zeros(len(self.images), len(self.category_ids))             # (I, N) multi-hot
        rows = []
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd") or w <= 0 or h <= 0 or ann["category_id"] not in index_of:
                continue
            i = image_index[ann["image_id"]]
            self.labels[i, index_of[ann["category_id"]]] = 1.0
            rows.append([i, x, y, x + w, y + h, index_of[ann["category_id"]], short[i]])
        self.objects = torch.tensor(rows, dtype=torch.float32).reshape(-1, 7)          # (M, 7)
        if split == "train" and len(self.objects) == 0:
            raise DatasetError(f"{ann_file}: no usable box annotations, so there is nothing to pretrain "
                               "the backbone on. Use --pretrained_backbone '' (random init) or a path.")

    def object_batch(self, indices: Tensor, crop: int, short_side: int,
                     generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Crops around objects `indices` (B,) -> images (B, 3, crop, crop) normalised, labels (B,).

        A crop is `crop` pixels of the image resized to `short_side` (DETR's resize rule), so the
        object keeps the size DETR will see, unless it would not fit: then the crop widens until
        the object fills 90 % of it. With a generator (training): the scale varies by x0.7-1.4,
        the object sits anywhere inside the crop, and half the crops are flipped. Without: centred,
        no jitter, no flip. Outside the image the crop is black (zero before normalisation)."""
        rows = self.objects[indices]                                                     # (B, 7)
        x0, y0, x1, y1 = rows[:, 1:5].unbind(1)
        n = len(rows)
        scale = short_side / rows[:, 6]                                                  # (B,) DETR's resize
        if generator is None:
            shift, flip = torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool)
        else:
            scale = scale * torch.exp((torch.rand(n, generator=generator) - 0.5) * 2 * math.log(1.4))
            shift = torch.rand(n, 2, generator=generator) - 0.5                          # (B, 2) in [-0.5, 0.5)
            flip = torch.rand(n, generator=generator) < 0.5
        extent = torch.stack([x1 - x0, y1 - y0], 1)                                      # (B, 2) object w, h
        side = torch.maximum(crop / scale, extent.max(1).values / 0.9)                   # (B,) crop side, px
        centre = (rows[:, 1:3] + rows[:, 3:5]) / 2 + shift * (side[:, None] - extent)     # object stays inside
        cx, cy = centre.unbind(1)
        windows = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)  # (B, 4) xyxy
        crops = torch.cat([roi_align(self.images[int(i)][None].float(), [w[None]], crop, aligned=True)
                           for i, w in zip(rows[:, 0].tolist(), windows)])               # (B, 3, crop, crop)
        crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
        return _normalise(crops), rows[:, 5].long()

    def image_batch(self, indices: Tensor, size: int, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Whole images `indices` (B,), letterboxed to size x size -> (B, 3, size, size), labels (B, N)."""
        batch = torch.zeros(len(indices), 3, size, size)
        for b, i in enumerate(indices.tolist()):
            image = self.images[i].float()
            h, w = image.shape[-2:]
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            batch[b, :, :nh, :nw] = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True,
                                                  align_corners=False)[0]
        if generator is not None:
            flip = torch.rand(len(indices), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return _normalise(batch), self.labels[indices]


def _pixels(path: Path) -> np.ndarray:
    try:
        return np.ascontiguousarray(np.asarray(load_rgb(path)).transpose(2, 0, 1))       # (3, H, W) uint8
    except (FileNotFoundError, OSError, ValueError) as e:
        raise DatasetError(f"Image file {path} cannot be read for backbone pretraining ({e}). Restore or "
                           "regenerate it, or remove it from the annotation JSON.") from None


def _normalise(images_0_255: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 255] -> ImageNet-normalised, as DETR's input transform does."""
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None] * 255
    std = torch.tensor(IMAGENET_STD)[None, :, None, None] * 255
    return (images_0_255 - mean) / std


# ----------------------------------------------------------------------------- training

def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch(data: ClassificationSet, indices: Tensor, cfg: PretrainConfig,
           generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    if cfg.task == "objects":
        return data.object_batch(indices, cfg.crop_size, cfg.short_side, generator)
    return data.image_batch(indices, cfg.image_size, generator)


def _loss(logits: Tensor, labels: Tensor, task: str) -> Tensor:
    if task == "objects":
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels)


def _num_correct(logits: Tensor, labels: Tensor, task: str) -> float:
    """objects: correct top-1; multilabel: images whose every label is right at threshold 0.5."""
    if task == "objects":
        return float((logits.argmax(-1) == labels).sum())
    return float(((logits > 0) == labels.bool()).all(-1).sum())


@torch.no_grad()
def accuracy(model: BackboneClassifier, data: ClassificationSet, cfg: PretrainConfig, limit: int = 1000) -> float:
    """Accuracy on (at most `limit` items of) `data`, without augmentation."""
    was_training = model.training
    model.eval()
    n = min(limit, len(data.objects) if cfg.task == "objects" else len(data.images))
    correct = 0.0
    for start in range(0, n, 100):
        images, labels = _batch(data, torch.arange(start, min(n, start + 100)), cfg, None)
        correct += _num_correct(model(images), labels, cfg.task)
    model.train(was_training)
    return correct / max(n, 1)


def pretrain(coco_path: PathLike, cfg: PretrainConfig, progress: bool = True) -> dict:
    """Train a BackboneClassifier on `coco_path`'s train split; return the checkpoint dict.

    The dict: `model` (the backbone body's state_dict, torchvision key names), `head` (the
    classifier's, unused by DETR), `args` (the config, architecture included), `categories` (the
    class order of the head), `history` (per-step loss and train accuracy every 25 steps) and
    `val_accuracy` (on the val split, when it has objects). Leaves torch's global RNG untouched.
    """
    if cfg.task not in PRETRAIN_TASKS:
        raise ValueError(f"PretrainConfig.task must be one of {PRETRAIN_TASKS}, got {cfg.task!r}.")
    # The caller's random streams are left as they were: a training run that pretrains first must
    # initialise its model exactly like one that finds the weights cached.
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(THREADS)
        try:
            torch.manual_seed(cfg.seed)
            return _pretrain(coco_path, cfg, progress)
        finally:
            torch.set_num_threads(threads)


def _pretrain(coco_path: PathLike, cfg: PretrainConfig, progress: bool) -> dict:
    generator = torch.Generator().manual_seed(cfg.seed)
    train = ClassificationSet(coco_path, "train")
    model = BackboneClassifier(cfg.backbone, cfg.stride, len(train.category_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pool = len(train.objects) if cfg.task == "objects" else len(train.images)
    history, window = [], []
    bar = tqdm(range(cfg.steps), desc=f"pretrain {cfg.backbone} ({cfg.task})", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        indices = torch.randint(pool, (cfg.batch_size,), generator=generator)
        images, labels = _batch(train, indices, cfg, generator)
        logits = model(images)
        loss = _loss(logits, labels, cfg.task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append((float(loss.detach()), _num_correct(logits.detach(), labels, cfg.task) / len(labels)))
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": sum(w[0] for w in window) / len(window),
                            "train_accuracy": sum(w[1] for w in window) / len(window)})
            window.clear()
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['train_accuracy']:.2f}", refresh=False)
    val_accuracy = None
    if (Path(coco_path) / "annotations" / "instances_val2017.json").is_file():
        val = ClassificationSet(coco_path, "val", train.category_ids)
        if len(val.objects):
            val_accuracy = accuracy(model, val, cfg)
    return {"model": model.backbone.body.state_dict(), "head": model.fc.state_dict(), "args": dataclasses.asdict(cfg),
            "categories": train.category_ids, "history": history, "val_accuracy": val_accuracy}


def load_classifier(path: PathLike) -> tuple[BackboneClassifier, dict]:
    """The pretraining classifier (backbone + head) back from a file `pretrain` wrote, in eval mode,
    and the whole checkpoint dict (args, categories, history, val_accuracy)."""
    ckpt = load_checkpoint(path)
    if "head" not in ckpt or "args" not in ckpt:
        raise CheckpointError(f"{path} holds backbone weights only, not a detr_full.pretrain classifier "
                              "(no 'head' or 'args' entry).")
    args = ckpt["args"]
    model = BackboneClassifier(args["backbone"], args["stride"], len(ckpt["categories"]))
    model.backbone.body.load_state_dict(ckpt["model"])
    model.fc.load_state_dict(ckpt["head"])
    return model.eval(), ckpt


# ----------------------------------------------------------------------------- cache

def cache_path(coco_path: PathLike, cfg: PretrainConfig, cache_dir: Optional[PathLike] = None) -> Path:
    """Where `ensure_pretrained` keeps the weights for this config and these training annotations."""
    ann_file = Path(coco_path) / "annotations" / "instances_train2017.json"
    if not ann_file.is_file():
        raise DatasetError(f"{ann_file} does not exist, so the backbone cannot be pretrained on {coco_path}. "
                           "Pass a COCO-layout folder (annotations/instances_train2017.json + train2017/).")
    digest = hashlib.sha1(json.dumps({**dataclasses.asdict(cfg), "revision": REVISION}, sort_keys=True).encode())
    digest.update(ann_file.read_bytes())
    return Path(cache_dir or DEFAULT_CACHE) / f"{cfg.backbone}_stride{cfg.stride}_{cfg.task}_{digest.hexdigest()[:12]}.pth"


def ensure_pretrained(coco_path: Optional[PathLike] = None, cfg: Optional[PretrainConfig] = None,
                      cache_dir: Optional[PathLike] = None, progress: bool = True) -> Path:
    """The path of backbone weights pretrained with `cfg` on `coco_path` (default: data/shapes),
    trained now if no valid cached file exists in `cache_dir` (default: data/pretrained). A cached file that does not load or does not fit
    the architecture is reported and rebuilt."""
    cfg = cfg or PretrainConfig()
    coco_path = Path(coco_path) if coco_path is not None else ensure_shapes()
    path = cache_path(coco_path, cfg, cache_dir)
    # One maker per cache file: a second process (two notebooks tested side by side) waits, then reuses it.
    with maker_lock(path):
        return _cached_or_pretrained(path, coco_path, cfg, progress)


def _cached_or_pretrained(path: Path, coco_path: Path, cfg: PretrainConfig, progress: bool) -> Path:
    """`path` when it holds valid weights for `cfg`, else pretrain now and save them there."""
    if path.is_file():
        try:
            weights = load_checkpoint(path)
            if weights.get("args") != dataclasses.asdict(cfg):
                raise CheckpointError(f"{path} was made with other settings ({weights.get('args')})")
            with torch.random.fork_rng(devices=[]):      # building the ResNet to check against draws its init
                architecture = Backbone(cfg.backbone, stride=cfg.stride).body
            check_backbone_weights(architecture, weights["model"], str(path), cfg.backbone)
            return path
        except CheckpointError as e:
            print(f"Cached pretrained backbone is unusable and will be rebuilt: {e}", file=sys.stderr)
    n = "an object crop" if cfg.task == "objects" else "an image"
    print(f"Pretraining the {cfg.backbone} backbone on {coco_path} ({cfg.steps} steps of {cfg.batch_size} x {n}, "
          f"task '{cfg.task}'); made once, then reused from {path}", flush=True)
    start = time.perf_counter()
    result = pretrain(coco_path, cfg, progress=progress)
    save_checkpoint(result, path)
    val = f"{result['val_accuracy']:.3f}" if result["val_accuracy"] is not None else "n/a"
    print(f"Pretrained in {time.perf_counter() - start:.0f} s: val accuracy {val}", flush=True)
    return path


def pretrained_backbone_path(cfg: TrainConfig, coco_path: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """What `pretrained_backbone="pretrain"` means for a training config: the cached weights for its
    backbone, stride, pretrain_task, pretrain_steps, val_size (the crops' scale) and seed on
    `coco_path`, made first if needed."""
    pcfg = PretrainConfig(backbone=cfg.backbone, stride=cfg.backbone_stride, task=cfg.pretrain_task,
                          steps=cfg.pretrain_steps, short_side=cfg.val_size, seed=cfg.seed)
    return ensure_pretrained(coco_path, pcfg, cache_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detr_full.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco_path", default=None, help="COCO-layout folder (default: data/shapes, made if missing)")
    parser.add_argument("--out", default="", help="write the weights here (default: the cache in data/pretrained)")
    cfg = config_from_args(PretrainConfig, argv, parser=parser)
    ns = parser.parse_known_args(argv)[0]
    try:
        if ns.out:
            coco_path = ns.coco_path or ensure_shapes()
            result = pretrain(coco_path, cfg)
            save_checkpoint(result, ns.out)
            path = Path(ns.out)
            print(f"val accuracy {result['val_accuracy']}")
        else:
            path = ensure_pretrained(ns.coco_path, cfg)
    except (DatasetError, CheckpointError, ValueError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    print(f"Backbone weights: {path}\nUse them with: python -m detr_full.train --pretrained_backbone {path} "
          f"--backbone {cfg.backbone} --backbone_stride {cfg.stride}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
