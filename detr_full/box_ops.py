"""Box formats and overlaps.

Two formats live inside detr-course: absolute `xyxy` (COCO loading, PostProcess, torchvision.ops)
and normalised `cxcywh` (targets, model outputs, matcher, losses). COCO JSON's `xywh` is converted
to `xyxy` on the line that reads it, in `data/coco.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cx, cy, w, h -> (..., 4) x0, y0, x1, y1."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) x0, y0, x1, y1 -> (..., 4) cx, cy, w, h."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...,)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of broadcastable (..., 4) xyxy boxes -> two (...) tensors."""
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)                          # (..., 2) overlap size
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union, union


def giou_broadcast(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of broadcastable (..., 4) xyxy boxes -> (...), unchecked: callers validate the boxes."""
    iou, union = _iou_and_union(boxes1, boxes2)
    top_left = torch.min(boxes1[..., :2], boxes2[..., :2])              # smallest enclosing box
    bottom_right = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union. boxes1 (N, 4), boxes2 (M, 4), both xyxy -> iou (N, M), union (N, M)."""
    return _iou_and_union(boxes1[:, None, :], boxes2[None, :, :])


def check_boxes_xyxy(boxes: Tensor, name: str = "boxes") -> None:
    """Raise a ValueError naming `name` if any (..., 4) xyxy box has x1 < x0 or y1 < y0."""
    bad = (boxes[..., 2:] < boxes[..., :2]).any(-1).flatten()
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}: box {i} = {boxes.reshape(-1, 4)[i].tolist()} (xyxy) has negative width or height. "
            "Boxes must have x1 >= x0 and y1 >= y0; for cxcywh boxes this means w >= 0 and h >= 0 "
            "(DETR targets are normalised cx, cy, w, h: check the box format).")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019). boxes1 (N, 4), boxes2 (M, 4), both xyxy, same units -> (N, M).

    Degenerate boxes (x1 < x0 or y1 < y0) would give meaningless values, so they raise a ValueError.
    """
    check_boxes_xyxy(boxes1, "boxes1")
    check_boxes_xyxy(boxes2, "boxes2")
    return giou_broadcast(boxes1[:, None, :], boxes2[None, :, :])


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of matched pairs: the diagonal of `generalized_box_iou` without the (N, N) matrix.
    boxes1 (N, 4), boxes2 (N, 4), both xyxy -> (N,)."""
    check_boxes_xyxy(boxes1, "boxes1")
    check_boxes_xyxy(boxes2, "boxes2")
    return giou_broadcast(boxes1, boxes2)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes around binary masks. masks (N, H, W) -> (N, 4) xyxy, pixel-inclusive maxima.

    An empty mask gives (1e8, 1e8, 0, 0), as in the official code: an inverted box that any
    validity check rejects.
    """
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device)
    masks = masks.bool()
    h, w = masks.shape[-2:]
    ys = torch.arange(h, dtype=torch.float, device=masks.device)[None, :, None]  # (1, H, 1)
    xs = torch.arange(w, dtype=torch.float, device=masks.device)[None, None, :]  # (1, 1, W)
    x_max = (masks * xs).flatten(1).max(-1).values
    y_max = (masks * ys).flatten(1).max(-1).values
    x_min = (masks * xs).masked_fill(~masks, 1e8).flatten(1).min(-1).values
    y_min = (masks * ys).masked_fill(~masks, 1e8).flatten(1).min(-1).values
    return torch.stack([x_min, y_min, x_max, y_max], dim=1)
