"""PostProcess: model outputs -> per-image detections in absolute xyxy pixels (for COCO eval and plots).

Every query yields a detection: its most likely real class (no-object excluded) and that class's
probability as the score. There is no threshold, no NMS and no top-k, as in the official code;
callers filter by score. `nms` is there for the experiments that ask what NMS would change
(the paper's Fig. 4, one-to-many matching): DETR itself needs none.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detr_full.box_ops import box_cxcywh_to_xyxy
from detr_full.classification import ClassificationRule, SoftmaxClassification


class PostProcess(nn.Module):
    def __init__(self, classification: Optional[ClassificationRule] = None):
        """classification: how a query's logits give its score and label (classification.py; None:
        DETR's softmax, "no object" excluded)."""
        super().__init__()
        self.classification = classification or SoftmaxClassification()

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) normalised cxcywh; target_sizes (B, 2) as (h, w):
        the original size for COCO eval, the augmented size for drawing on the network input.
        Returns B dicts: scores (Q,), labels (Q,), boxes (Q, 4) absolute xyxy."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes) or target_sizes.shape[-1] != 2:
            raise ValueError(f"target_sizes must be (B, 2) = ({len(logits)}, 2) as (h, w); "
                             f"got {tuple(target_sizes.shape)}.")
        scores, labels = self.classification.scores(logits)               # (B, Q) each
        h, w = target_sizes.unbind(1)
        scale = torch.stack([w, h, w, h], dim=1).to(boxes.dtype)           # (B, 4)
        boxes_xyxy = box_cxcywh_to_xyxy(boxes) * scale[:, None, :]         # (B, Q, 4)
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes_xyxy)]


def nms(results: list[dict[str, Tensor]], iou: float) -> list[dict[str, Tensor]]:
    """Per image and per class, drop a detection that overlaps a better-scored one by IoU > `iou`.
    results: PostProcess's (scores, labels, boxes absolute xyxy per image) -> the same, fewer rows."""
    kept = []
    for r in results:
        keep = batched_nms(r["boxes"], r["scores"], r["labels"], iou)    # indices, by decreasing score
        kept.append({k: v[keep] for k, v in r.items()})
    return kept
