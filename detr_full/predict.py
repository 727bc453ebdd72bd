"""Run a trained DETR on image files: `python -m detr_full.predict --resume CKPT IMAGES... --out DIR`.

Writes `DIR/results.json` (COCO results format plus the file name and class name) and one
`DIR/<stem>.png` per image with the kept boxes drawn. Example:
    python -m detr_full.predict --resume runs/shapes/checkpoint.pth data/shapes/val2017 --out preds
    python -m detr_full.predict --resume detr-r50-e632da11.pth cats.jpg --out preds --threshold 0.9

The model is rebuilt from the checkpoint: its `args` (a dict written by detr_full.train, or the
official argparse.Namespace) give the architecture and every option; the official args, which have
no num_classes, take it from the class head. A checkpoint with weights only (the published ones)
is described from its state_dict alone (backbone depth, layers, widths, learned or sine positions,
num_classes and num_queries); what it cannot tell (nheads, DC5) takes the official defaults, with
DC5 assumed when the file name contains "dc5". Class names come from the checkpoint's
`categories` (written by `detr_full.train`), else the COCO names when num_classes is 91, else ids.

As the official demo: each query's best class (no-object excluded), keep queries with score >
threshold; no NMS. Images are resized as the run that wrote the checkpoint evaluated them (its
`val_size` and `max_size`; 800 and 1333, the official sizes, for files without them), unless
`--size` / `--max_size` say otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from detr_full.build import build_detr
from detr_full.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from detr_full.config import DETRConfig, config_from_dict
from detr_full.data.coco import DatasetError, load_rgb
from detr_full.data.transforms import make_coco_transforms
from detr_full.detr import DETR
from detr_full.postprocess import PostProcess
from detr_full.viz import draw_boxes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

# COCO 2017 category names indexed by id (0 and the 11 ids COCO skipped are "N/A"), as the official demo.
COCO_CLASSES = [
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]

# ResNet depth from the number of blocks in layer3 and whether blocks are bottlenecks (have conv3).
_RESNETS = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50", (23, True): "resnet101",
            (36, True): "resnet152"}


class PredictError(ValueError):
    """Bad input to predict (no images, unreadable file); the message says what to fix."""


def _count_layers(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def config_from_checkpoint(ckpt: Mapping[str, Any], source: str = "") -> DETRConfig:
    """The DETRConfig of a checkpoint: its `args` where present, else what its weights' shapes tell."""
    sd = ckpt["model"]
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if "query_embed.weight" not in sd or "class_embed.weight" not in sd:
        raise CheckpointError(f"{source or 'The checkpoint'} does not hold DETR weights (no query_embed / "
                              "class_embed); pass a checkpoint written by detr_full.train or the official DETR.")
    if args:
        values = dict(args)
        # the official main.py has no num_classes flag (its build hard-codes it): the class head tells,
        # softmax with "no object" being the only rule it knows
        values.setdefault("num_classes", sd["class_embed.weight"].shape[0] - 1)
    else:  # weights only: describe the model from the state_dict
        enc = _count_layers(sd, "transformer.encoder.layers.")
        dec = _count_layers(sd, "transformer.decoder.layers.")
        first = "transformer.encoder.layers.0." if enc else "transformer.decoder.layers.0."
        bottleneck = "backbone.0.body.layer1.0.conv3.weight" in sd
        backbone = _RESNETS.get((_count_layers(sd, "backbone.0.body.layer3."), bottleneck))
        values = dict(enc_layers=enc, dec_layers=dec,
                      pre_norm="transformer.encoder.norm.weight" in sd,
                      position_embedding="learned" if "backbone.1.row_embed.weight" in sd else "sine",
                      # DC5 changes no weight shape; only the published file names tell (Bottleneck ResNets only)
                      dilation=bottleneck and "dc5" in Path(str(source)).name.lower(),
                      num_classes=sd["class_embed.weight"].shape[0] - 1,
                      num_queries=sd["query_embed.weight"].shape[0],
                      hidden_dim=sd["query_embed.weight"].shape[1])
        if f"{first}linear1.weight" in sd:
            values["dim_feedforward"] = sd[f"{first}linear1.weight"].shape[0]
        if backbone:
            values["backbone"] = backbone
    values.update(aux_loss=False,            # inference needs the last decoder layer only
                  pretrained_backbone="")    # the checkpoint brings the backbone weights: download nothing
    return config_from_dict(DETRConfig, values)


def input_size(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """(short side, longest side) the run that wrote `ckpt` evaluated at: its val_size and max_size,
    else the official 800 and 1333."""
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else (args or {})
    return int(args.get("val_size", 800)), int(args.get("max_size", 1333))


def class_names(ckpt: Mapping[str, Any], num_classes: int) -> Optional[dict[int, str]]:
    """{category id: name} from the checkpoint's `categories`, else COCO's for 91 classes, else None."""
    cats = ckpt.get("categories")
    if isinstance(cats, Mapping):
        return {int(k): str(v) for k, v in cats.items()}
    if isinstance(cats, (list, tuple)) and cats and isinstance(cats[0], Mapping):  # COCO JSON style
        return {int(c["id"]): str(c["name"]) for c in cats}
    if num_classes == len(COCO_CLASSES):
        return {i: n for i, n in enumerate(COCO_CLASSES) if n != "N/A"}
    return None


def load_predictor(checkpoint: Union[str, Path, Mapping[str, Any]], device: Union[str, torch.device] = "cpu",
                   source: str = "") -> tuple[DETR, PostProcess, Optional[dict[int, str]], DETRConfig]:
    """Model (eval mode, on `device`), PostProcess, class names and config from a checkpoint (a path or
    URL, or the dict load_checkpoint read)."""
    source = source or (str(checkpoint) if not isinstance(checkpoint, Mapping) else "the checkpoint")
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint, map_location="cpu")
    cfg = config_from_checkpoint(ckpt, source)
    model, _, postprocess = build_detr(cfg)
    load_model_weights(model, ckpt["model"], source=source)
    return model.to(device).eval(), postprocess, class_names(ckpt, cfg.num_classes), cfg


def list_images(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """Files as given; folders expand to the image files they contain (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise PredictError(f"{p} does not exist; pass image files or folders of images.")
    if not files:
        raise PredictError(f"No image files found in {', '.join(map(str, paths))} "
                           f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return files


@torch.no_grad()
def predict(checkpoint: Union[str, Path], images: Sequence[Union[str, Path]], out: Union[str, Path],
            threshold: float = 0.7, device: str = "auto", size: Optional[int] = None, max_size: Optional[int] = None,
            draw: bool = True) -> list[dict]:
    """Detect objects in `images`; write `out/results.json` and (with `draw`) `out/<stem>.png`.
    size, max_size: the network input's short side and longest side (None: the checkpoint's, see input_size).

    Returns the results: one dict per kept detection with `file_name`, `category_id`,
    `category_name`, `bbox` [x, y, w, h] in original-image pixels and `score`.
    """
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model, postprocess, names, _ = load_predictor(ckpt, device, source=str(checkpoint))
    run_size, run_max_size = input_size(ckpt)
    size, max_size = size or run_size, max_size or run_max_size
    print(f"Images resized to a short side of {size} px, at most {max_size} px long"
          + (" (as the run that wrote the checkpoint evaluated)" if (size, max_size) == (run_size, run_max_size) else ""))
    transform = make_coco_transforms("val", val_size=size, max_size=max_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    used_stems: set[str] = set()
    for path in list_images(images):
        try:
            pil = load_rgb(path)
        except OSError as e:
            raise PredictError(f"{path} cannot be read as an image ({e}).") from None
        image, _ = transform(pil, None)                                   # (3, H, W) normalised
        outputs = model(image[None].to(device))                           # no padding: mask None
        orig_hw = torch.tensor([[pil.height, pil.width]], device=device)  # (1, 2) as (h, w)
        det = postprocess(outputs, orig_hw)[0]
        keep = det["scores"] > threshold
        boxes_xyxy, labels, scores = det["boxes"][keep].cpu(), det["labels"][keep].cpu(), det["scores"][keep].cpu()
        for box, label, score in zip(boxes_xyxy.tolist(), labels.tolist(), scores.tolist()):
            x0, y0, x1, y1 = box
            results.append({"file_name": path.name, "category_id": int(label),
                            "category_name": (names or {}).get(int(label), str(label)),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(score), 4)})
        if draw:
            stem = path.stem if path.stem not in used_stems else f"{path.stem}_{len(used_stems)}"
            used_stems.add(stem)
            save_drawing(pil, boxes_xyxy, labels, scores, names, out / f"{stem}.png")
        print(f"{path}: {int(keep.sum())} detection(s) above {threshold}")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"Wrote {len(results)} detection(s) to {out / 'results.json'}")
    return results


def save_drawing(image, boxes_xyxy: Tensor, labels: Tensor, scores: Tensor, names, path: Path) -> None:
    """The image with its boxes, as a PNG at roughly the image's own resolution."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(max(image.width / dpi, 2), max(image.height / dpi, 2)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_boxes(ax, image, boxes_xyxy, labels, scores, names)
    fig.savefig(path, dpi=dpi)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detr_full.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--resume", required=True, help="checkpoint path or http(s) URL")
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder for results.json and the drawings")
    parser.add_argument("--threshold", type=float, default=0.7, help="keep detections with score > this")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--size", type=int, default=None,
                        help="short side of the network input (default: the checkpoint run's val_size, else 800)")
    parser.add_argument("--max_size", type=int, default=None,
                        help="longest side of the network input (default: the checkpoint run's max_size, else 1333)")
    args = parser.parse_args(argv)
    try:
        predict(args.resume, args.images, args.out, args.threshold, args.device, args.size, args.max_size)
    except (CheckpointError, DatasetError, PredictError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
