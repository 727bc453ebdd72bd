"""Configuration dataclasses. Field names are the official `main.py` flag names, defaults its defaults.

`DETRConfig` holds what builds the model, matcher and criterion; `TrainConfig` adds what the
training loop, data pipeline and CLI need. `python -m detr_full.train --help` is generated from
the `TrainConfig` fields, and a notebook's papermill `parameters` cell uses the same names.
`check_config` holds every rule of which options need or exclude which: the CLI, the model
builder and the successors' model all ask it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints


@dataclass
class DETRConfig:
    # Labels keep their COCO category ids, so num_classes = max id + 1 = 91 for COCO (ids 1..90 with
    # gaps). "No object" is logit index num_classes: the class head has num_classes + 1 outputs.
    num_classes: int = 91
    # Backbone
    backbone: str = "resnet50"          # a torchvision ResNet (resnet18/34/50/101, official) or mobilenet_v2
    dilation: bool = False              # DC5: dilate layer4 instead of striding (output stride 16)
    position_embedding: str = "sine"    # "sine" (paper) or "learned" (row/col embeddings, <= 50x50); "none": Table 3
    lr_backbone: float = 1e-5           # <= 0 freezes the whole backbone (official semantics)
    pretrained_backbone: str = ""       # "" = random init (offline); "imagenet", a path or a URL; for
                                        # training, "pretrain" = made on the train set (detr_full.pretrain)
    # Not in the official code, which always fine-tunes a pretrained backbone; defaults = official.
    frozen_bn: bool = True              # FrozenBatchNorm2d; False = trainable BatchNorm2d (random init)
    train_stem: bool = False            # also train conv1 + layer1 (official: frozen, as pretrained)
    backbone_stride: int = 32           # 32 = up to layer4 (official); 16 / 8 stop after layer3 / layer2
    # Transformer (paper section 3.2, "DETR architecture")
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    hidden_dim: int = 256               # D, the transformer width
    dropout: float = 0.1
    nheads: int = 8
    num_queries: int = 100              # Q, detection slots per image
    pre_norm: bool = False              # pre-LN layers (+ a final encoder LayerNorm)
    position_at_input: bool = False     # paper Table 3: add the spatial encoding once to the encoder input
                                        # instead of to the keys and queries of every attention (official)
    aux_loss: bool = True               # decoding losses after every decoder layer (paper section 3.1)
    # Convergence fixes of DETR's successors, off by default (official DETR)
    num_query_groups: int = 1           # Group DETR: K groups of queries matched one-to-one each, in training
    spatial_prior: bool = False         # a learned box per query, a Gaussian cross-attention prior around it
    dn_groups: int = 0                  # DN-DETR: groups of noised ground-truth queries in training (needs spatial_prior)
    dn_label_noise: float = 0.2         # probability that a denoising query's label is flipped
    dn_box_noise: float = 0.4           # a denoising box's centre moves by up to this x half its size; w, h x (1 +- it)
    anchor_queries: bool = False        # DAB-DETR: query positions made from the reference boxes (needs spatial_prior)
    query_selection: bool = False       # two-stage Deformable DETR / DINO: the first reference boxes are the
                                        # encoder tokens' best proposals, per image (needs spatial_prior)
    selection_nms: float = 0.0          # > 0: query selection skips proposals overlapping a better one (IoU)
    proposal_copies: int = 1            # > 1: the proposals' loss matches each object to this many tokens
                                        # (one-to-many, after H-DETR / Co-DETR; needs query_selection)
    fine_memory: bool = False           # Deformable DETR's finer level, in plain attention: the decoder layers
                                        # after the first also attend to the backbone's stage before the last
    conditional: bool = False           # Conditional DETR: a spatial query from each reference box's centre
                                        # adds its own term to the cross-attention logits (needs spatial_prior)
    focal_loss: bool = False            # Deformable DETR: sigmoid focal classification and matching cost
    focal_alpha: float = 0.25           # the focal loss's positive weight (gamma is 2)
    # Hungarian matcher weights (official main.py: 1, 5, 2)
    set_cost_class: float = 1.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    # Loss weights; eos_coef down-weights the "no object" class in the CE (paper: /10)
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1


@dataclass
class TrainConfig(DETRConfig):
    # Optimisation (official main.py defaults)
    lr: float = 1e-4
    batch_size: int = 2                 # per process
    weight_decay: float = 1e-4
    epochs: int = 300
    lr_drop: int = 200                  # StepLR step size in epochs (gamma 0.1)
    clip_max_norm: float = 0.1          # gradient clipping max norm; 0 disables
    warmup_steps: int = 0               # linear lr warm-up in iterations; 0 = official (none)
    ema_decay: float = 0.0              # evaluate and save a moving average of the weights (ema.py), e.g.
                                        # 0.999; 0 = official (the last step's weights)
    pretrain_task: str = "objects"      # with pretrained_backbone="pretrain": detr_full.pretrain's task
    pretrain_steps: int = 600           # ... and its length (cached: made once per dataset and config)
    frozen_weights: Optional[str] = None
    masks: bool = False                 # segmentation head: not implemented in detr-course
    mask_loss_coef: float = 1.0
    dice_loss_coef: float = 1.0
    # Data
    dataset_file: str = "coco"
    coco_path: Optional[str] = None     # None = the synthetic shapes dataset in data/shapes (data/trees: the
                                        # tree crowns); both are made on first use (data/prepared.py)
    extra_val: str = ""                 # another split of coco_path, evaluated and logged after each epoch
                                        # beside val (its keys prefixed "<split>_"), e.g. the trees' othersites
    coco_panoptic_path: Optional[str] = None
    remove_difficult: bool = False
    scales: Optional[str] = None        # training short sides, e.g. "480,512,...,800"; None = official
    max_size: int = 1333                # longest side after resize
    val_size: int = 800                 # validation short side
    aspect_ratio_grouping: bool = False # batch images of similar aspect (less padding); official: random
    pad_to: int = 1                     # pad every batch's height and width to a multiple of this (1: official);
                                        # with cuda_graphs e.g. 128: fewer shapes, so batches share graphs
    backbone_in_loader: bool = False    # a frozen ResNet (lr_backbone 0) runs in the loader's workers, beside
                                        # the main process (CPU, 2 workers on 2 cores: 1.9x the steps/s)
    # Run
    output_dir: str = ""                # empty = no checkpoints or logs
    device: str = "auto"                # auto = cuda when available, else cpu
    seed: int = 42
    resume: str = ""                    # checkpoint path or URL
    finetune_from: str = ""             # weights only; heads whose shape differs are dropped
    start_epoch: int = 0
    eval: bool = False
    diagnostics: bool = False           # log the val set's matching instability and box spread (diagnostics.py)
    num_workers: int = 2
    amp: bool = False                   # autocast (bf16 on GPU)
    cuda_graphs: bool = False           # replay the model's forward and backward as CUDA graphs, one per batch
                                        # shape (cuda_graphs.py; the official model only)
    log_every: int = 0                  # read the logged values back from the device every N steps; 0 = auto:
                                        # every step on the CPU (free there), every 20 on a GPU (each read waits)
    world_size: int = 1
    dist_url: str = "env://"


C = TypeVar("C")

PRETRAIN = "pretrain"                   # the pretrained_backbone value that asks for detr_full.pretrain's weights
# DETRConfig fields whose non-default value asks for the successors' model (detr_full/successors/)
SUCCESSOR_OPTIONS = ("num_query_groups", "spatial_prior", "dn_groups", "anchor_queries", "query_selection",
                     "proposal_copies", "fine_memory", "conditional")
PRETRAIN_TASKS = ("objects", "multilabel")


def uses_successors(cfg: DETRConfig) -> bool:
    return any(getattr(cfg, name) != getattr(DETRConfig, name) for name in SUCCESSOR_OPTIONS)


class ConfigError(ValueError):
    """A flag combination detr-course cannot run; the message says what to do instead."""


def check_config(cfg: DETRConfig) -> None:
    """Raise a ConfigError naming the values and the fix when `cfg` breaks a rule of which options need
    or exclude which (a TrainConfig's training options too). The one place these rules are written."""
    if cfg.num_query_groups < 1:
        raise ConfigError(f"num_query_groups must be >= 1 (1 = plain DETR); got {cfg.num_query_groups}.")
    if cfg.dn_groups < 0:
        raise ConfigError(f"dn_groups must be >= 0 (0 = no denoising queries); got {cfg.dn_groups}.")
    # these options build on the reference boxes that spatial_prior turns on (successors/reference_boxes.py)
    needs_prior = {"anchor_queries": "makes the query positions from the reference boxes",
                   "query_selection": "proposes the first reference boxes",
                   "conditional": "takes its reference points from the reference boxes",
                   "dn_groups": "decodes noised ground-truth boxes as reference boxes"}
    for name, role in needs_prior.items():
        if getattr(cfg, name) and not cfg.spatial_prior:
            raise ConfigError(f"{name}={getattr(cfg, name)} {role} of the spatial prior, but spatial_prior=False: "
                              "turn on spatial_prior (--spatial_prior) or turn this option off.")
    for name in ("dn_groups", "query_selection"):       # one set of queries per image, not K groups
        if getattr(cfg, name) and cfg.num_query_groups > 1:
            raise ConfigError(f"{name}={getattr(cfg, name)} works on one group of queries, but num_query_groups="
                              f"{cfg.num_query_groups}: set num_query_groups to 1 or turn {name} off.")
    if not 0 <= cfg.selection_nms < 1 or (cfg.selection_nms and not cfg.query_selection):
        raise ConfigError(f"selection_nms={cfg.selection_nms}: the IoU above which query selection skips a proposal, "
                          "in [0, 1) (0: no NMS), and only with query_selection=True.")
    if cfg.proposal_copies < 1 or (cfg.proposal_copies > 1 and not cfg.query_selection):
        raise ConfigError(f"proposal_copies={cfg.proposal_copies}: how many encoder tokens each object is matched to in "
                          "the proposals' loss, >= 1 (1: one-to-one), and > 1 only with query_selection=True.")
    if cfg.fine_memory and cfg.dec_layers < 2:
        raise ConfigError(f"fine_memory gives the decoder layers after the first a finer level to attend to: it needs "
                          f"dec_layers >= 2; got {cfg.dec_layers}.")
    if cfg.focal_loss and not 0 < cfg.focal_alpha < 1:
        raise ConfigError(f"focal_alpha is the positives' weight in the focal loss, in (0, 1); got {cfg.focal_alpha}.")
    if isinstance(cfg, TrainConfig):
        check_training(cfg)


def check_training(cfg: TrainConfig) -> None:
    """The rules of the training options (part of check_config)."""
    unsupported = [text for given, text in (
        (cfg.masks, "--masks (the segmentation head)"),
        (cfg.frozen_weights, "--frozen_weights (only used to train the segmentation head)"),
        (cfg.dataset_file != "coco", f"--dataset_file {cfg.dataset_file} (only 'coco'-format detection data)")) if given]
    if unsupported:
        raise ConfigError(f"{' and '.join(unsupported)}: not supported in detr-course, which trains box "
                          "detection only. Remove the flag(s); any COCO-format dataset works with --coco_path.")
    if cfg.pretrained_backbone == PRETRAIN and cfg.pretrain_task not in PRETRAIN_TASKS:
        raise ConfigError(f"pretrain_task must be one of {', '.join(PRETRAIN_TASKS)}; got {cfg.pretrain_task!r}.")
    if cfg.backbone_in_loader and (cfg.lr_backbone > 0 or not cfg.frozen_bn):
        raise ConfigError(f"backbone_in_loader runs a copy of the ResNet in the loader's workers, so the ResNet "
                          f"must be frozen: set lr_backbone 0 (--lr_backbone 0; got {cfg.lr_backbone})"
                          + ("" if cfg.frozen_bn else " and frozen_bn=True (drop --no_frozen_bn)") + ".")
    if cfg.batch_size < 1 or cfg.epochs < 0 or cfg.lr_drop < 1 or cfg.warmup_steps < 0 or cfg.log_every < 0:
        raise ConfigError(f"need batch_size >= 1, epochs >= 0, lr_drop >= 1, warmup_steps >= 0 and log_every >= 0; "
                          f"got {cfg.batch_size}, {cfg.epochs}, {cfg.lr_drop}, {cfg.warmup_steps}, {cfg.log_every}.")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1) (0: no weight average; e.g. 0.999); got {cfg.ema_decay}.")
    parse_scales(cfg.scales)
    if cfg.pad_to < 1:
        raise ConfigError(f"pad_to must be >= 1 (1: pad to the largest image, as the official code); got {cfg.pad_to}.")
    if cfg.cuda_graphs and (uses_successors(cfg) or cfg.backbone_in_loader):
        on = [name for name in SUCCESSOR_OPTIONS + ("backbone_in_loader",) if getattr(cfg, name) != getattr(TrainConfig, name)]
        raise ConfigError(f"cuda_graphs captures the official model's forward and backward: turn off {', '.join(on)} "
                          "or cuda_graphs.")


def parse_scales(text: Optional[str]) -> Optional[list[int]]:
    """TrainConfig.scales, "480,512,544", -> [480, 512, 544] (None or "": the official scales)."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--scales must be comma-separated integers like 480,512,544; got {text!r}.") from None


def model_config(cfg: DETRConfig) -> DETRConfig:
    """The DETRConfig part of any config (a TrainConfig is a DETRConfig with more fields)."""
    names = {f.name for f in fields(DETRConfig)}
    return DETRConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, defaults: Optional[Any] = None) -> None:
    """One `--name` flag per dataclass field, with its type and default (from `defaults`, an
    instance of `cls`, when given: that is how a recipe changes the defaults).

    Booleans get `--name` and `--no_name`, so the official store_true flags (`--dilation`,
    `--pre_norm`, `--eval`) and `--no_aux_loss` both work whatever the default.
    """
    hints = get_type_hints(cls)
    for f in fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else f.default
        kind = hints[f.name]
        if get_origin(kind) is Union:  # Optional[X] -> X
            kind = next(a for a in get_args(kind) if a is not type(None))
        if kind is bool:
            parser.add_argument(f"--{f.name}", action="store_true", default=default,
                                help=f"(default: {default})")
            parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=default, help=f"(default: {default!r})")


def config_from_args(cls: type[C], argv: Optional[Sequence[str]] = None,
                     parser: Optional[argparse.ArgumentParser] = None, defaults: Optional[C] = None) -> C:
    """Parse `argv` into a `cls` instance (e.g. `config_from_args(TrainConfig, sys.argv[1:])`)."""
    parser = parser or argparse.ArgumentParser()
    add_config_arguments(parser, cls, defaults)
    ns = parser.parse_args(argv)
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build `cls` from a dict (e.g. a checkpoint's `args`), ignoring keys it has no field for."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def shapes_cpu_recipe(**overrides: Any) -> TrainConfig:
    """DETR on the synthetic shapes set (data/shapes) on a 2-core CPU, in minutes.

    `python -m detr_full.train --recipe shapes_cpu`; `make train` runs it from an ImageNet backbone on a
    shorter schedule (`shapes_imagenet_recipe`), notebooks 09 and 10 compare on it. Each departs from the
    official recipe (an ImageNet ResNet-50, 500 epochs on 16 GPUs) for the reason in its comment;
    pass keyword overrides to vary one, e.g. `shapes_cpu_recipe(num_queries=20)`. Every choice was
    measured with benchmarks/shapes_recipe.py: the curves, the alternatives tried and the run's
    minutes are in benchmarks/README.md ("The CPU recipe" and the sections after it).
    """
    recipe: dict[str, Any] = dict(
        backbone="resnet18",        # the cheapest ResNet
        pretrained_backbone=PRETRAIN,  # the paper starts from ImageNet; we pretrain on the train set's
        pretrain_steps=600,         # object crops (detr_full.pretrain; made once, then cached)
        backbone_stride=16,         # stop after layer3: 2x finer tokens for small objects, and cheaper
        lr_backbone=0.0,            # frozen once pretrained (official: 1e-5, BN and stem frozen), and run
        backbone_in_loader=True,    # in the 2 loader workers beside the main process: more steps per
        num_workers=2,              # minute than training layer2-3, at about the same AP50 per step
        lr=5e-4,                    # the transformer's (official 1e-4): a small model, a short run
        warmup_steps=100,           # linear warm-up: a random transformer at 5e-4 from step 0 is fragile
        clip_max_norm=0.1,          # official value
        pre_norm=True,              # pre-LN layers tolerate the higher lr better than post-LN
        hidden_dim=128,             # D: 5 shape classes need far less width than COCO (official 256)
        enc_layers=2,               # 2+2 layers (official 6+6): ~4x cheaper, enough for <= 8 objects
        dec_layers=2,
        dim_feedforward=512,        # 4 * D, as in the transformer paper (official 2048 = 8 * 256)
        dropout=0.0,                # 12 epochs do not overfit 2,000 images (val loss <= train loss)
        num_queries=10,             # shapes images hold at most 8 objects (official 100 for COCO)
        spatial_prior=True,         # each query looks around its own box from step 0 (spatial_prior.py)
        query_selection=True,       # ... a box the encoder proposes on this image (query_selection.py),
        selection_nms=0.3,          # no two overlapping by IoU > 0.3 while others are left,
        anchor_queries=True,        # and query positions made from those boxes (anchor_queries.py)
        fine_memory=True,           # the decoder's second layer also reads layer2 (fine_memory.py): finer
                                    # evidence for small objects' boxes
        aspect_ratio_grouping=True,  # fewer padded pixels per batch
        batch_size=8,
        scales="128,144,160,176",   # about the native image size (96..256 px): objects keep their
        max_size=224,               # pixels; max_size bounds the padded batch, thus the step time
        val_size=160,
        epochs=12,                  # 12 x 250 steps of batch 8
        lr_drop=9,                  # lr / 10 for the last 3 epochs
    )
    recipe.update(overrides)
    return TrainConfig(**recipe)


def shapes_imagenet_recipe(**overrides: Any) -> TrainConfig:
    """`make train`'s recipe: the shapes recipe from torchvision's ImageNet MobileNetV2 instead of a
    ResNet-18 pretrained on the training set's object crops, on two thirds of its schedule.

    `python -m detr_full.train --recipe shapes_imagenet --output_dir DIR`. The same DETR (stride 16,
    frozen, run in the loader's workers; 2+2 layers of width 128; the successors' options), only the
    backbone and the schedule differ. Measured side by side with `shapes_cpu` (benchmarks/README.md,
    "ImageNet for the shapes too"): at 12 epochs AP50 0.927-0.939 and AP 0.53 against 0.825-0.843
    and 0.35-0.40, with no pretraining and faster steps; on this schedule (2,000 steps) 0.921-0.928 and
    AP 0.485-0.501 over three seeds, against 0.902-0.908 and 0.46 for 6 epochs with the drop at 4.
    """
    recipe: dict[str, Any] = dict(
        backbone="mobilenet_v2",    # ImageNet-pretrained (torchvision's file; imagenet.py), frozen
        pretrained_backbone="imagenet",
        epochs=8,                   # 8 x 250 steps of batch 8
        lr_drop=6,                  # lr / 10 for the last 2 epochs
    )
    recipe.update(overrides)
    return shapes_cpu_recipe(**recipe)


def trees_cpu_recipe(**overrides: Any) -> TrainConfig:
    """DETR on the aerial tree-crown tiles (data/trees, made on first use) on a 2-core CPU, from an
    ImageNet MobileNetV2: real photographs, one class, up to 60 small touching objects per 400 px tile.

    `python -m detr_full.train --recipe trees_cpu --output_dir DIR`. The shapes recipe's model with
    what dense scenes of small objects need; each choice was measured with benchmarks/shapes_recipe.py
    --recipe trees_cpu
    (benchmarks/README.md, "The trees recipe": the curves, the alternatives tried and the minutes).
    """
    from detr_full.data.trees import DEFAULT_ROOT as TREES_ROOT   # config stays importable without data/

    recipe: dict[str, Any] = dict(
        coco_path=str(TREES_ROOT),  # cut from the deepforest wheel's NEON photographs on first use
        extra_val="othersites",     # OSBS and SOAP beside YELL's val tiles: the site shift, every epoch
        backbone="mobilenet_v2",    # ImageNet-pretrained (torchvision's file; imagenet.py), the cheapest
        pretrained_backbone="imagenet",
        backbone_stride=16,         # 25 x 25 tokens on a 400 px tile: a crown (13-95 px) spans 1-6 of them
        lr_backbone=0.0,            # frozen, run in the 2 loader workers (as the shapes recipe)
        backbone_in_loader=True,
        num_workers=2,
        num_queries=100,            # up to 60 crowns per tile
    )
    recipe.update(overrides)
    return shapes_cpu_recipe(**{**dict(scales="368,400,432", max_size=512, val_size=400, epochs=40, lr_drop=32,
                                       batch_size=4), **recipe})


RECIPES = {"shapes_cpu": shapes_cpu_recipe,   # `python -m detr_full.train --recipe shapes_cpu`
           "shapes_imagenet": shapes_imagenet_recipe,
           "trees_cpu": trees_cpu_recipe}
