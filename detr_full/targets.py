"""The target dict contract, and its check.

A batch's targets are a list of one dict per image, as `data.coco.CocoDetection` and its
transforms make them (transforms.py lists every key):
    labels    (T,)    int64   category ids (COCO's ids are kept: num_classes = max id + 1)
    boxes     (T, 4)  float   normalised cxcywh, w and h >= 0
    image_id  (1,)    int64   (optional for the loss; what error messages name)
The criterion and the matcher only read `labels` and `boxes`.

`check_targets` reads the values, so it runs where that costs nothing: on the host, once per
batch, in the data pipeline's collate (data/collate.py), and in SetCriterion for targets it is
handed directly (`SetCriterion.validate_targets`; a training run turns that off, since on a GPU
every such read would make the host wait for the device).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor


def _name(target: dict, i: int) -> str:
    image_id = target.get("image_id")
    return f"targets[{i}]" + (f" (image id {int(image_id.reshape(-1)[0])})"
                              if isinstance(image_id, Tensor) and image_id.numel() else "")


def check_target_shapes(targets: list[dict]) -> None:
    """Every target has `labels` (T,) and `boxes` (T, 4): shapes only, no value is read."""
    for i, t in enumerate(targets):
        labels, boxes = t.get("labels"), t.get("boxes")
        if labels is None or boxes is None:
            raise ValueError(f"{_name(t, i)} needs 'labels' (T,) int64 and 'boxes' (T, 4) normalised cxcywh; "
                             f"it has keys {sorted(t)}.")
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"{_name(t, i)}: 'boxes' must be (T, 4) and 'labels' (T,); got "
                             f"{tuple(boxes.shape)} and {tuple(labels.shape)}.")


def check_targets(targets: list[dict], num_classes: Optional[int] = None) -> None:
    """Raise a ValueError naming the image, the field and the fix unless every target keeps the contract:
    the shapes, labels >= 0 (and < num_classes when given), boxes with w, h >= 0."""
    check_target_shapes(targets)
    for i, t in enumerate(targets):
        labels, boxes = t["labels"], t["boxes"]
        if labels.numel() and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
            bad = labels.min() if labels.min() < 0 else labels.max()
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise ValueError(f"{_name(t, i)}['labels'] contains {int(bad)}, outside {bound}: labels are category "
                             "ids, and num_classes must be the max category id + 1.")
        if (boxes[:, 2:] < 0).any():
            j = int((boxes[:, 2:] < 0).any(-1).nonzero()[0, 0])
            raise ValueError(f"{_name(t, i)}['boxes'][{j}] = {boxes[j].tolist()} has a negative width or "
                             "height. Target boxes are normalised (cx, cy, w, h) with w, h >= 0; "
                             "drop degenerate boxes before training.")
