"""The Hungarian matcher: a one-to-one assignment of predictions to ground-truth boxes (paper eq. 1).

Dimension key: B batch, Q queries, K classes (incl. no-object), T targets in the whole batch.

The cost is computed for the whole batch in one batched call and moved to the host in a single
transfer; scipy then solves one assignment per image.
"""

from __future__ import annotations

from typing import Optional

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from detr_full.box_ops import box_cxcywh_to_xyxy, check_boxes_xyxy, giou_broadcast
from detr_full.classification import ClassificationRule, SoftmaxClassification


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1,
                 classification: Optional[ClassificationRule] = None):
        """Weights of the three costs (official main.py uses 1, 5, 2); `classification` gives the class
        cost (classification.py; None: DETR's softmax rule, whose cost is -p)."""
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all three costs are 0, so every matching is equally good.")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.classification = classification or SoftmaxClassification()

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> Tensor:
        """The matching cost (B, Q, T_max): entry [b, q, t] is the cost of giving query q of image b
        the target t of the same image; columns past image b's own T_b targets are padding.

        The official matcher scores every query against every target of the whole batch and then
        keeps the diagonal blocks; scoring each image against its own targets only is B times less
        work and gives the same blocks.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]    # (B, Q, K), (B, Q, 4) cxcywh
        # Pad each image's targets to T_max with class 0 and a valid box, so padding costs stay finite.
        tgt_ids = pad_sequence([t["labels"] for t in targets], batch_first=True)  # (B, T_max)
        tgt_boxes = pad_sequence([t["boxes"] for t in targets], batch_first=True, padding_value=0.5)  # (B, T_max, 4)
        cost_class = self.classification.cost(logits, tgt_ids)            # (B, Q, T_max)
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)                     # (B, Q, T_max)
        pred_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes)
        check_boxes_xyxy(tgt_xyxy, "target boxes")
        cost_giou = -giou_broadcast(pred_xyxy[:, :, None, :], tgt_xyxy[:, None, :, :])      # (B, Q, T_max)
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) cxcywh; targets: B dicts with labels (T_b,)
        and boxes (T_b, 4) cxcywh. Returns B pairs (query_idx, target_idx), int64, len min(Q, T_b),
        query indices ascending."""
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in sizes]
        cost = self.cost_matrix(outputs, targets).cpu().numpy()            # the one host transfer
        indices = []
        for b, size in enumerate(sizes):
            if size == 0:
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(cost[b, :, :size])
            indices.append((torch.from_numpy(rows).long(), torch.from_numpy(cols).long()))
        return indices
