"""Sigmoid focal classification, with the matching cost to match (Deformable DETR: Zhu et al. 2021,
"Deformable DETR: Deformable Transformers for End-to-End Object Detection", arXiv 2010.04159,
section A.2 of its appendix; the focal loss itself: Lin et al. 2017, arXiv 1708.02002).

Why it matters for DETR's slow start: DETR's softmax cross-entropy has a "no object" class that
most queries answer (10 queries, 1 to 8 objects here; 100 queries and ~7 objects on COCO). Its
weight is cut to 1/10 (`eos_coef`) so that it does not swamp the positives, yet the easy
"no object" answers still carry much of the gradient, and a query's class score and its "no
object" score compete in one softmax. A sigmoid per class has no "no object" class: a query is an
object when one of its class probabilities is high. The focal loss scales each term by
(1 - p_t)^gamma, so the many easy negatives fade as soon as they are learned, and weights
positives by alpha and negatives by 1 - alpha.

`SigmoidFocal` is a classification rule (detr_full/classification.py): the class head, the
matcher, the criterion and PostProcess are given it instead of DETR's softmax. What changes with
`DETRConfig.focal_loss` (off = the official DETR):
- the class head has `num_classes` outputs, not num_classes + 1, and its bias starts at
  -log((1 - 0.01) / 0.01): every class probability is 0.01 at step 0 (Lin et al. section 4.1);
- `loss_ce` is the sigmoid focal loss over every query and class (a query matched to nothing
  has all-zero targets), summed and divided by the number of target boxes, as Deformable DETR;
- the matcher's class cost is the focal loss of the target class as a positive minus its loss
  as a negative, so matching and loss agree on what a good class score is;
- post-processing scores a query by its highest class probability (the output format, one
  detection per query, is unchanged);
- `cardinality_error` counts a query as an object when its highest probability exceeds 0.5.
Deformable DETR weights the class loss and cost by 2 (`cls_loss_coef`, `set_cost_class`): the loss
weight is the rule's `loss_weight`; pass `--set_cost_class 2` to match its cost too.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRIOR_PROBABILITY = 0.01


class SigmoidFocal:
    """Sigmoid focal classification, for logits (..., C) with C = num_classes (no "no object")."""

    loss_weight = 2.0  # Deformable DETR's cls_loss_coef

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0):
        self.num_classes, self.alpha, self.gamma = num_classes, alpha, gamma

    def num_logits(self, num_classes: int) -> int:
        return num_classes                                     # no "no object" logit

    def init_head(self, head: nn.Linear) -> None:
        """Every class probability starts at PRIOR_PROBABILITY (the sigmoid of the bias)."""
        nn.init.constant_(head.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def class_weights(self, num_classes: int) -> None:
        return None                                            # alpha weighs positives against negatives

    def loss(self, logits: Tensor, target_classes: Tensor, num_boxes: float | Tensor,
             class_weights: Optional[Tensor] = None) -> Tensor:
        """logits (B, Q, C); target_classes (B, Q), num_classes where a query is matched to nothing.
        -> the focal loss summed over queries and classes, divided by num_boxes."""
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)  # (B, Q, C)
        p = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")    # (B, Q, C)
        p_t = p * onehot + (1 - p) * (1 - onehot)                                    # prob. of the right answer
        weight = self.alpha * onehot + (1 - self.alpha) * (1 - onehot)
        return (weight * (1 - p_t) ** self.gamma * ce).sum() / num_boxes

    def cost(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        """logits (B, Q, C); target_ids (B, T) -> (B, Q, T): the focal loss of calling query q class
        target_ids[t] minus that of calling it not that class (lower = a better match)."""
        p = logits.sigmoid()                                                          # (B, Q, C)
        positive = self.alpha * (1 - p) ** self.gamma * -torch.log(p.clamp(min=1e-8))
        negative = (1 - self.alpha) * p ** self.gamma * -torch.log((1 - p).clamp(min=1e-8))
        index = target_ids[:, None, :].expand(-1, logits.shape[1], -1)               # (B, Q, T)
        return (positive - negative).gather(2, index)

    def scores(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """logits (B, Q, C) -> (scores, labels), each (B, Q): a query's most probable class."""
        return logits.sigmoid().max(-1)

    def is_object(self, logits: Tensor) -> Tensor:
        """(B, Q) bool: the query's most probable class is more likely than not."""
        return self.scores(logits)[0] > 0.5
