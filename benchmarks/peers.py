"""DETR against the detectors people use instead, at equal CPU minutes: the paper's Table 1 on our data.

Trains, one after the other in this process (1 thread), the recipe's DETR and torchvision's own
`FasterRCNN`, `RetinaNet` and `FCOS` on the same data, from the same pretrained backbone, each for
`--minutes` of CPU time (process time; data loading included, evaluation excluded), and evaluates
each on the data set's val split with the same COCO evaluator (pycocotools, `engine.run_coco_eval`),
at the end and at `--snapshots` CPU minutes on the way. One JSON line per detector and evaluation
goes to `--out`; the table is printed.

    python benchmarks/peers.py --coco_path data/shapes --minutes 4 --seed 42 --out /tmp/peers.jsonl
    python benchmarks/peers.py --recipe trees_cpu --minutes 12 --snapshots 4 --seed 1 --out /tmp/peers_trees.jsonl
    python benchmarks/peers.py --summarize /tmp/peers.jsonl /tmp/peers_trees.jsonl --store 15_peers

The backbone is the recipe's, pretrained and frozen for all four: with `shapes_cpu` the ResNet-18
that detr_full.pretrain makes for that data set (its pretraining counted once, reported apart as
`pretrain_cpu_minutes`, 0 when it was cached); with `trees_cpu` the ImageNet MobileNetV2. DETR reads
its last stage (stride 16); the peers read the same body through torchvision's
`FeaturePyramidNetwork` over its last two stages (strides 8 and 16) plus its max-pooled level
(stride 32), as torchvision's own `*_fpn` builders do over a ResNet's stages.

The peers use torchvision's standard settings, adapted only to the image size:
- the image sizes are the recipe's (`min_size` = its training scales, `max_size`; at evaluation
  `min_size` = its `val_size`), in torchvision's own transform (ImageNet normalisation);
- anchors follow torchvision's rule, one octave per level, scaled to the objects: Faster R-CNN
  `(4 * stride,)` x aspect ratios (0.5, 1, 2) per level; RetinaNet `4 * stride` x 2^(0, 1/3, 2/3) x
  (0.5, 1, 2); FCOS one point per cell, of size `stride` (its levels' size ranges follow);
  `--anchor_scale 0.5` halves them for small objects (the trees: crowns of 13-95 px);
- Faster R-CNN's proposal and sampled-RoI counts scale with the image's area (`proposal_counts`):
  torchvision's 2000 proposals and 512 RoIs per image are for 800 px images, and at 176 px they made
  a step cost 13 s of CPU against DETR's 0.5 (`--proposals standard` keeps them);
- the reference recipes' optimiser: SGD, momentum 0.9, weight decay 1e-4, lr 0.02 (Faster R-CNN)
  or 0.01 (RetinaNet, FCOS) per 16 images scaled to the batch, a linear warm-up, gradient clipping
  off; every other setting (RPN and RoI sampling ratios, score thresholds 0.05 / 0.05 / 0.2, 100
  detections per image) torchvision's defaults;
- every detector, DETR included, gets the same batch size, the same horizontal flips, and the same
  schedule in CPU time: lr / 10 after 75 % of the budget (the recipe drops at 9 of 12 epochs).
`--lr_scale` multiplies the peers' learning rates (their sweep; DETR's lr is the recipe's, tuned).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import random
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detr_full.backbone import Backbone
from detr_full.config import RECIPES, TrainConfig, parse_scales
from detr_full.course import RESULTS
from detr_full.data.coco import CocoDetection, coco_api
from detr_full.engine import coco_results, run_coco_eval, train_one_epoch
from detr_full.rng import seed_everything
from detr_full.run_setup import prepared_dataset, setup_run

REPO = Path(__file__).resolve().parents[1]
PEERS = ("faster_rcnn", "retinanet", "fcos")
BASE_LR = {"faster_rcnn": 0.02, "retinanet": 0.01, "fcos": 0.01}   # torchvision's references, per 16 images
DROP_AT = 0.75


class PyramidBody(nn.Module):
    """Our pretrained, frozen backbone body, its last two stages through torchvision's FPN: what
    torchvision's detectors take as `backbone` (an `out_channels` attribute, an OrderedDict of maps)."""

    def __init__(self, backbone: Backbone, out_channels: int = 256):
        super().__init__()
        self.body = backbone.body
        self.fine_stage, self.last_stage = backbone.fine_stage, list(backbone.body._modules)[-1]
        self.fpn = FeaturePyramidNetwork([backbone.fine_channels, backbone.num_channels], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        maps, x = OrderedDict(), images
        with torch.no_grad():                                     # frozen: as the recipe's DETR backbone
            for name, stage in self.body.named_children():
                x = stage(x)
                if name == self.fine_stage:
                    maps["0"] = x                                 # stride 8
        maps["1"] = x                                             # stride 16
        return self.fpn(maps)                                     # "0", "1", "pool" (stride 32)


def _training_sizes(cfg: TrainConfig) -> tuple[int, ...]:
    """The recipe's training scales (the shorter side), or its val size where it has none."""
    return tuple(parse_scales(cfg.scales) or [cfg.val_size])


def proposal_counts(cfg: TrainConfig) -> dict[str, int]:
    """Faster R-CNN's proposal and RoI counts scaled to the image's area: torchvision's defaults (2000 / 1000
    proposals in training / evaluation, 512 sampled RoIs per image) are for images of 800 px; at the
    recipe's largest training scale s they are multiplied by (s / 800)^2, floored at the 150 proposals of
    torchvision's own low-resolution model (fasterrcnn_mobilenet_v3_large_320_fpn) and 64 RoIs."""
    area = (max(_training_sizes(cfg)) / 800) ** 2
    train, test = max(150, round(2000 * area)), max(150, round(1000 * area))
    return dict(rpn_pre_nms_top_n_train=train, rpn_post_nms_top_n_train=train, rpn_pre_nms_top_n_test=test,
                rpn_post_nms_top_n_test=test, box_batch_size_per_image=max(64, round(512 * area)))


def build_peer(kind: str, cfg: TrainConfig, num_classes: int, anchor_scale: float,
               proposals: str = "by_area", width: int = 256) -> nn.Module:
    """torchvision's `kind` on the recipe's frozen backbone. `width`: the FPN's channels, which set the
    heads' (torchvision's 256; the box head of Faster R-CNN keeps its ratio, 1024 per 256)."""
    backbone = Backbone(cfg.backbone, train_backbone=False, pretrained=cfg.pretrained_backbone,
                        stride=cfg.backbone_stride, keep_fine=True)
    body = PyramidBody(backbone, width)
    strides = (cfg.backbone_stride // 2, cfg.backbone_stride, cfg.backbone_stride * 2)
    sizes = dict(min_size=_training_sizes(cfg), max_size=cfg.max_size)
    if kind == "faster_rcnn":
        anchors = AnchorGenerator(tuple((round(4 * s * anchor_scale),) for s in strides), ((0.5, 1.0, 2.0),) * 3)
        counts = proposal_counts(cfg) if proposals == "by_area" else {}
        head = TwoMLPHead(width * 7 * 7, 4 * width)
        return FasterRCNN(body, rpn_anchor_generator=anchors, box_head=head, box_predictor=FastRCNNPredictor(
                          4 * width, num_classes), box_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=7,
                          sampling_ratio=2), **sizes, **counts)
    if kind == "retinanet":
        anchors = AnchorGenerator(tuple(tuple(round(4 * s * anchor_scale * 2 ** (k / 3)) for k in range(3))
                                        for s in strides), ((0.5, 1.0, 2.0),) * 3)
        return RetinaNet(body, num_classes, anchor_generator=anchors, **sizes)
    if kind == "fcos":
        anchors = AnchorGenerator(tuple((round(s * anchor_scale),) for s in strides), ((1.0,),) * 3)
        return FCOS(body, num_classes, anchor_generator=anchors, **sizes)
    raise ValueError(f"unknown peer {kind!r}; choose from {', '.join(PEERS)}")


def _peer_batches(dataset: CocoDetection, batch_size: int, generator: torch.Generator):
    """Endless shuffled batches of (images [0, 1] (3, H, W), targets {boxes xyxy px, labels}), flipped at random."""
    to_tensor = torchvision.transforms.functional.to_tensor
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for begin in range(0, len(order) - batch_size + 1, batch_size):
            images, targets = [], []
            for i in order[begin:begin + batch_size]:
                pil, target = dataset[i]
                image, boxes = to_tensor(pil), target["boxes"].clone()
                if torch.rand((), generator=generator) < 0.5:        # the official hflip, as DETR's transforms
                    image = image.flip(-1)
                    boxes[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
                images.append(image)
                targets.append({"boxes": boxes, "labels": target["labels"]})
            yield images, targets


@torch.no_grad()
def _evaluate_peer(model: nn.Module, dataset: CocoDetection, val_size: int) -> list[float]:
    model.eval()
    model.transform.min_size = (val_size,)
    to_tensor = torchvision.transforms.functional.to_tensor
    detections = {}
    for i in range(len(dataset)):
        pil, target = dataset[i]
        out = model([to_tensor(pil)])[0]                            # boxes in the original image's pixels
        detections.update(coco_results([out], [target]))
    return _coco_stats(dataset, detections)


def _coco_stats(dataset: CocoDetection, detections: dict) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = run_coco_eval(coco_api(dataset), [d for ds in detections.values() for d in ds], list(detections))
    return [float(x) for x in coco_eval.stats]


def _lr_at(fraction: float, step: int, warmup_steps: int) -> float:
    """The schedule's factor: linear warm-up over the first steps, / 10 after DROP_AT of the budget."""
    return min(1.0, (step + 1) / warmup_steps) * (0.1 if fraction >= DROP_AT else 1.0)


class CpuBudget:
    """The training's CPU clock (this process's time), paused while a snapshot is evaluated; says when
    a snapshot is due and when the budget is spent."""

    def __init__(self, minutes: float, snapshots: list[float]):
        self.budget, self.pending = minutes * 60, sorted(m * 60 for m in snapshots if m < minutes)
        self.start, self.paused = time.process_time(), 0.0

    @property
    def used(self) -> float:
        return time.process_time() - self.start - self.paused

    def snapshot_due(self) -> bool:
        if self.pending and self.used >= self.pending[0]:
            self.pending.pop(0)
            return True
        return False

    @contextlib.contextmanager
    def pause(self):
        t = time.process_time()
        try:
            yield
        finally:
            self.paused += time.process_time() - t


def train_peer(kind: str, cfg: TrainConfig, coco_path: str, minutes: float, lr_scale: float, anchor_scale: float,
               seed: int, snapshots: tuple[float, ...] = (), proposals: str = "by_area", width: int = 256) -> list[dict]:
    """torchvision's `kind` for `minutes` of CPU time; one row per snapshot (CPU minutes, evaluated
    without stopping the schedule) and one at the end."""
    seed_everything(seed)
    train_set = CocoDetection(Path(coco_path) / "train2017", Path(coco_path) / "annotations" / "instances_train2017.json")
    val_set = CocoDetection(Path(coco_path) / "val2017", Path(coco_path) / "annotations" / "instances_val2017.json")
    num_classes = max(coco_api(val_set).getCatIds() + coco_api(train_set).getCatIds()) + 1
    model = build_peer(kind, cfg, num_classes, anchor_scale, proposals, width)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = BASE_LR[kind] * cfg.batch_size / 16 * lr_scale
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    batches = _peer_batches(train_set, cfg.batch_size, torch.Generator().manual_seed(seed))
    rows, steps, clock = [], 0, CpuBudget(minutes, list(snapshots))

    def evaluate_now() -> None:
        with clock.pause():
            rows.append(_record(kind, _evaluate_peer(model, val_set, cfg.val_size), clock.used, steps, model, lr=lr))
            model.train()
            model.transform.min_size = _training_sizes(cfg)

    model.train()
    while clock.used < clock.budget:
        images, targets = next(batches)                               # loading counts: inside the clock
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_at(clock.used / clock.budget, steps, cfg.warmup_steps)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{kind}: non-finite loss at step {steps}: {losses}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if clock.snapshot_due():
            evaluate_now()
    evaluate_now()
    return rows


class _Budget(Exception):
    pass


def train_detr(cfg: TrainConfig, minutes: float, seed: int, snapshots: tuple[float, ...] = ()) -> list[dict]:
    """The recipe's DETR for `minutes` of CPU time, with the same time-based lr drop as the peers; rows
    as train_peer's."""
    run = setup_run(dataclasses.replace(cfg, seed=seed, num_workers=0), log=lambda message: None)
    model, optimizer, warmup = run.model, run.optimizer, run.warmup
    base = [group["lr"] for group in optimizer.param_groups]
    rows, steps, clock = [], 0, CpuBudget(minutes, list(snapshots))

    def evaluate_now() -> None:
        with clock.pause():
            model.eval()
            detections = {}
            with torch.no_grad():
                for images, mask, targets in run.val_loader():
                    sizes = torch.stack([t["orig_size"] for t in targets])
                    detections.update(coco_results(run.postprocess(model(images, mask), sizes), targets))
            rows.append(_record("detr", _coco_stats(run.val_set, detections), clock.used, steps, model, lr=cfg.lr))
            model.train()

    def after_step() -> None:
        nonlocal steps
        steps += 1
        warmup.step()
        if clock.used >= DROP_AT * clock.budget:
            for group, lr in zip(optimizer.param_groups, base):
                group["lr"] = lr * 0.1
        if clock.snapshot_due():
            evaluate_now()
        if clock.used >= clock.budget:
            raise _Budget

    epoch = 0
    with contextlib.suppress(_Budget):
        while True:
            train_one_epoch(model, run.criterion, run.train_loader(epoch), optimizer, "cpu", epoch, cfg.clip_max_norm,
                            scheduler_step=after_step, progress=False)
            epoch += 1
    evaluate_now()
    return rows


def _record(detector: str, stats: list[float], cpu_s: float, steps: int, model: nn.Module, **extra) -> dict:
    return {"detector": detector, "ap50": round(stats[1], 4), "ap": round(stats[0], 4), "ap75": round(stats[2], 4),
            "aps": round(stats[3], 4), "apm": round(stats[4], 4), "apl": round(stats[5], 4),
            "ar100": round(stats[8], 4), "cpu_minutes": round(cpu_s / 60, 2), "steps": steps,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad), **extra}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="shapes_cpu", choices=sorted(RECIPES), help="DETR's recipe, and the "
                        "backbone, sizes and batch for all (default: %(default)s)")
    parser.add_argument("--coco_path", default=None, help="COCO-layout folder (default: the recipe's data set)")
    parser.add_argument("--minutes", type=float, help="CPU minutes of training per detector")
    parser.add_argument("--snapshots", default="", help="comma-separated CPU minutes at which each detector is also "
                        "evaluated on the way (the schedule does not change: e.g. 4 in a 12-minute run)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", help="JSON lines file, appended to")
    parser.add_argument("--detectors", default="detr," + ",".join(PEERS), help="comma-separated (default: all four)")
    parser.add_argument("--lr_scale", type=float, default=1.0, help="multiplies the peers' learning rates")
    parser.add_argument("--anchor_scale", type=float, default=1.0, help="multiplies the peers' anchor sizes")
    parser.add_argument("--peer_width", type=int, default=256, help="the peers' FPN and head channels "
                        "(torchvision's: 256; 128 = the recipe DETR's hidden size)")
    parser.add_argument("--proposals", default="by_area", choices=("by_area", "standard"), help="Faster R-CNN's "
                        "proposal and RoI counts: scaled to the image's area (default), or torchvision's for 800 px")
    parser.add_argument("--summarize", nargs="+", metavar="FILE.jsonl", help="train nothing: the table of these "
                        "runs' lines, the mean over seeds per data set, CPU minutes and detector")
    parser.add_argument("--store", metavar="NAME", help="with --summarize: also store the lines as "
                        "notebooks/results/NAME.json, with the commands that made them (notebook 15 draws it)")
    args = parser.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for name in args.summarize for line in Path(name).read_text().splitlines() if line]
        print(summary(rows))
        if args.store:
            print("stored in", store(args.store, rows))
        return
    if args.minutes is None or args.out is None:
        parser.error("--minutes and --out are needed to train (or --summarize FILE.jsonl)")
    torch.set_num_threads(1)
    cfg = RECIPES[args.recipe](**({"coco_path": args.coco_path} if args.coco_path else {}))
    coco_path = prepared_dataset(cfg.coco_path)
    cfg = dataclasses.replace(cfg, coco_path=coco_path, device="cpu", seed=args.seed)
    pretrain_cpu = 0.0
    if cfg.pretrained_backbone == "pretrain":                       # made once (and timed) for DETR and the peers
        run = setup_run(dataclasses.replace(cfg, num_workers=0), log=lambda message: None)
        cfg, pretrain_cpu = dataclasses.replace(cfg, pretrained_backbone=run.cfg.pretrained_backbone), run.pretrain_cpu_s
        del run
    rows = []
    for detector in args.detectors.split(","):
        random.seed(args.seed)
        print(f"== {detector}: {args.minutes} CPU minutes on {coco_path} (seed {args.seed})", flush=True)
        snapshots = tuple(float(m) for m in args.snapshots.split(",") if m)
        new_rows = train_detr(cfg, args.minutes, args.seed, snapshots) if detector == "detr" else \
            train_peer(detector, cfg, coco_path, args.minutes, args.lr_scale, args.anchor_scale, args.seed, snapshots,
                       args.proposals, args.peer_width)
        source = "ImageNet" if cfg.pretrained_backbone == "imagenet" else "pretrained on this data set"
        for row in new_rows:
            row.update(data=str(coco_path), minutes_budget=args.minutes, snapshots=list(snapshots), seed=args.seed,
                       recipe=args.recipe, backbone=f"{cfg.backbone} ({source}, frozen)",
                       pretrain_cpu_minutes=round(pretrain_cpu / 60, 2))
            if detector != "detr":
                row.update(lr_scale=args.lr_scale, anchor_scale=args.anchor_scale, width=args.peer_width)
            if detector == "faster_rcnn":
                row.update(proposals=args.proposals)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        rows += new_rows
    print(table(rows))


def commands(rows: list[dict]) -> list[str]:
    """Commands that make the rows again: one per group of rows that one call makes (data set, budget,
    seed, the peers' settings; Faster R-CNN's proposal setting splits it from the other detectors of its
    run), its snapshots being the group's rows below the budget."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["recipe"], r["data"], r["minutes_budget"], r["seed"], r.get("proposals", ""),
                         r.get("width", 256), r.get("lr_scale", 1.0)), []).append(r)
    lines = []
    for (recipe, data, budget, seed, proposals, width, _), rs in sorted(runs.items()):
        path = Path(data)
        path = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        detectors = ",".join(dict.fromkeys(r["detector"] for r in rs))
        snapshots = ",".join(f"{m:g}" for m in sorted({_minutes(r) for r in rs if _minutes(r) < budget}))
        peer = next((r for r in rs if "anchor_scale" in r), None)
        lines.append(f"python benchmarks/peers.py --recipe {recipe} --coco_path {path} --minutes {budget:g}"
                     + (f" --snapshots {snapshots}" if snapshots else "") + f" --seed {seed} --detectors {detectors}"
                     + (f" --lr_scale {peer['lr_scale']:g} --anchor_scale {peer['anchor_scale']:g}" if peer else "")
                     + (" --proposals standard" if proposals == "standard" else "")
                     + (f" --peer_width {width}" if width != 256 else "")
                     + " --out peers.jsonl")
    return lines


def summary(rows: list[dict]) -> str:
    """Markdown: per data set, CPU minutes (`_minutes`) and detector, the mean over seeds (AP50's range
    beside), and the CPU minutes the rows really used."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((Path(r["data"]).name, _minutes(r), label(r)), []).append(r)
    lines = ["| data | CPU min | detector | AP50 (range) | AP | AP75 | AP_S | AP_M | AP_L | steps | CPU min used | "
             "params | seeds |", "|---" * 13 + "|"]
    for (data, minutes, detector), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -_mean(kv[1], "ap50"))):
        ap50 = [r["ap50"] for r in rs]
        spread = f" ({min(ap50):.3f}-{max(ap50):.3f})" if len(rs) > 1 else ""
        ap = " | ".join(_ap(_mean(rs, key)) for key in ("ap", "ap75", "aps", "apm", "apl"))
        lines.append(f"| {data} | {minutes:g} | {detector} | {_mean(rs, 'ap50'):.3f}{spread} | {ap} | "
                     f"{_mean(rs, 'steps'):.0f} | {_mean(rs, 'cpu_minutes'):.1f} | {rs[0]['params'] / 1e6:.1f} M | "
                     f"{','.join(str(r['seed']) for r in rs)} |")
    return "\n".join(lines)


def label(row: dict) -> str:
    """The detector's name in tables, with what differs from the standard settings: Faster R-CNN with
    torchvision's 800 px proposal counts, a narrower FPN and heads, a scaled learning rate."""
    return (row["detector"] + (" (800 px proposals)" if row.get("proposals") == "standard" else "")
            + (f" (width {row['width']})" if row.get("width", 256) != 256 else "")
            + (f" (lr x{row['lr_scale']:g})" if row.get("lr_scale", 1.0) != 1.0 else ""))


def _minutes(row: dict) -> float:
    """The CPU minutes a row was asked for: its run's budget when it is the run's last, else its snapshot's
    (taken at the first step past that time, so a little later; whole minutes for rows that do not list
    their run's snapshots)."""
    if row["cpu_minutes"] >= row["minutes_budget"]:
        return row["minutes_budget"]
    return max((m for m in row.get("snapshots", ()) if m <= row["cpu_minutes"]), default=int(row["cpu_minutes"]))


def _ap(value: float) -> str:
    return "-" if value < 0 else f"{value:.3f}"              # COCOeval's -1: no object of that size in the split


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def store(name: str, rows: list[dict]) -> Path:
    """notebooks/results/NAME.json in the stored-run layout (detr_full.course.stored_run): the rows, each
    with its table `label` and its asked-for CPU `minutes`, the summary table, and the command of each
    run that made them."""
    path = RESULTS / f"{name}.json"
    results = [{**r, "label": label(r), "minutes": _minutes(r)} for r in rows]
    stored = json.dumps({"command": "\n".join(commands(rows)), "parameters": {}, "table": summary(rows),
                         "results": results}, indent=1)
    path.write_text(stored + "\n")
    return path


def table(rows: list[dict]) -> str:
    """The rows as a markdown table, Table 1's columns."""
    lines = ["| detector | AP50 | AP | AP_S | AP_M | AP_L | steps | CPU min | params |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['ap50']:.3f} | {r['ap']:.3f} | {r['aps']:.3f} | {r['apm']:.3f} | "
                     f"{r['apl']:.3f} | {r['steps']} | {r['cpu_minutes']:.1f} | {r['params'] / 1e6:.1f} M |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
