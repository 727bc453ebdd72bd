"""The Hungarian matcher: a one-to-one assignment of predictions to ground-truth boxes (paper eq. 1).

Dimension key: B batch, Q queries, K classes (incl. no-object), T targets in the whole batch.

Like the official matcher, the cost matrix is computed for the whole batch at once and moved to
the host in a single transfer; scipy then solves one assignment per image on its diagonal block.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from detr_full.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1):
        """Weights of the three costs (official main.py uses 1, 5, 2)."""
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all three costs are 0, so every matching is equally good.")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> Tensor:
        """The batched matching cost (B, Q, T): entry [b, q, t] is the cost of assigning query q of
        image b to target t of the batch (only the block of image b's own targets is used)."""
        bsz, num_queries = outputs["pred_logits"].shape[:2]
        prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)            # (B*Q, K)
        boxes = outputs["pred_boxes"].flatten(0, 1)                         # (B*Q, 4) cxcywh
        tgt_ids = torch.cat([t["labels"] for t in targets])                 # (T,)
        tgt_boxes = torch.cat([t["boxes"] for t in targets])                # (T, 4) cxcywh
        # The class cost approximates -log p with -p: it is on the same scale as the box costs.
        cost_class = -prob[:, tgt_ids]                                      # (B*Q, T)
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)                      # (B*Q, T)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(bsz, num_queries, -1)                              # (B, Q, T)

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
        offsets = np.cumsum([0] + sizes)
        indices = []
        for b, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
            if start == end:
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(cost[b, :, start:end])
            indices.append((torch.from_numpy(rows).long(), torch.from_numpy(cols).long()))
        return indices
