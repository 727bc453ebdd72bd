"""PostProcess: model outputs -> per-image detections in absolute xyxy pixels (for COCO eval and plots).

Every query yields a detection: its most likely real class (no-object excluded) and that class's
probability as the score. There is no threshold, no NMS and no top-k, as in the official code;
callers filter by score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detr_full.box_ops import box_cxcywh_to_xyxy
from detr_full.focal import SigmoidFocal


class PostProcess(nn.Module):
    def __init__(self, focal: bool = False):
        """focal: the logits are per-class sigmoids with no "no object" class (focal.py)."""
        super().__init__()
        self.focal = focal

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) normalised cxcywh; target_sizes (B, 2) as (h, w):
        the original size for COCO eval, the augmented size for drawing on the network input.
        Returns B dicts: scores (Q,), labels (Q,), boxes (Q, 4) absolute xyxy."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(logits) != len(target_sizes) or target_sizes.shape[-1] != 2:
            raise ValueError(f"target_sizes must be (B, 2) = ({len(logits)}, 2) as (h, w); "
                             f"got {tuple(target_sizes.shape)}.")
        if self.focal:
            scores, labels = SigmoidFocal.scores(logits)                   # (B, Q) each
        else:
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)          # (B, Q) each
        h, w = target_sizes.unbind(1)
        scale = torch.stack([w, h, w, h], dim=1).to(boxes.dtype)           # (B, 4)
        boxes_xyxy = box_cxcywh_to_xyxy(boxes) * scale[:, None, :]         # (B, Q, 4)
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes_xyxy)]
