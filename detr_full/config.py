"""Configuration dataclasses. Field names are the official `main.py` flag names, defaults its defaults.

`DETRConfig` holds what builds the model, matcher and criterion; `TrainConfig` adds what the
training loop, data pipeline and CLI need. `python -m detr_full.train --help` is generated from
the `TrainConfig` fields, and a notebook's papermill `parameters` cell uses the same names.
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
    backbone: str = "resnet50"          # any torchvision ResNet: resnet18/34/50/101
    dilation: bool = False              # DC5: dilate layer4 instead of striding (output stride 16)
    position_embedding: str = "sine"    # "sine" (paper) or "learned" (row/col embeddings, <= 50x50)
    lr_backbone: float = 1e-5           # <= 0 freezes the whole backbone (official semantics)
    pretrained_backbone: str = ""       # "" = random init (offline); "imagenet", a path or a URL
    # Transformer (paper section 3.2, "DETR architecture")
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    hidden_dim: int = 256               # D, the transformer width
    dropout: float = 0.1
    nheads: int = 8
    num_queries: int = 100              # Q, detection slots per image
    pre_norm: bool = False              # pre-LN layers (+ a final encoder LayerNorm)
    aux_loss: bool = True               # decoding losses after every decoder layer (paper section 3.1)
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
    frozen_weights: Optional[str] = None
    masks: bool = False                 # segmentation head: not implemented in detr-course
    mask_loss_coef: float = 1.0
    dice_loss_coef: float = 1.0
    # Data
    dataset_file: str = "coco"
    coco_path: Optional[str] = None     # None = the synthetic shapes dataset in data/shapes
    coco_panoptic_path: Optional[str] = None
    remove_difficult: bool = False
    scales: Optional[str] = None        # training short sides, e.g. "480,512,...,800"; None = official
    max_size: int = 1333                # longest side after resize
    val_size: int = 800                 # validation short side
    # Run
    output_dir: str = ""                # empty = no checkpoints or logs
    device: str = "auto"                # auto = cuda when available, else cpu
    seed: int = 42
    resume: str = ""                    # checkpoint path or URL
    finetune_from: str = ""             # weights only; heads whose shape differs are dropped
    start_epoch: int = 0
    eval: bool = False
    num_workers: int = 2
    amp: bool = False                   # autocast (bf16 on GPU)
    world_size: int = 1
    dist_url: str = "env://"


C = TypeVar("C")


def model_config(cfg: DETRConfig) -> DETRConfig:
    """The DETRConfig part of any config (a TrainConfig is a DETRConfig with more fields)."""
    names = {f.name for f in fields(DETRConfig)}
    return DETRConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if text.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--name` flag per dataclass field, with its type and default.

    Booleans are `store_true` flags as in the official main.py (`--dilation`, `--pre_norm`,
    `--eval`, `--amp`); `aux_loss` also gets the official `--no_aux_loss`.
    """
    hints = get_type_hints(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if get_origin(kind) is Union:  # Optional[X] -> X
            kind = next(a for a in get_args(kind) if a is not type(None))
        if kind is bool:
            if f.default:
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                                    help=f"disable {f.name}")
            else:
                parser.add_argument(f"--{f.name}", action="store_true")
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default,
                                help=f"default: {f.default!r}")


def config_from_args(cls: type[C], argv: Optional[Sequence[str]] = None,
                     parser: Optional[argparse.ArgumentParser] = None) -> C:
    """Parse `argv` into a `cls` instance (e.g. `config_from_args(TrainConfig, sys.argv[1:])`)."""
    parser = parser or argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    ns = parser.parse_args(argv)
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build `cls` from a dict (e.g. a checkpoint's `args`), ignoring keys it has no field for."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
