"""How a query's class is scored: the one rule that the class head, the matcher, the criterion and
PostProcess share (paper section 3.1).

Dimension key: B batch, Q queries, T targets per image, K logits per query.

DETR's rule is a softmax over K = num_classes + 1 logits, the last one "no object": a query that
is matched to nothing is trained to answer it, and a detection's score is its best real class's
probability. A successor may swap in another rule with the same methods (for instance sigmoid
focal classification, successors/focal.py); nothing else in the model, matcher, criterion or
PostProcess changes.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassificationRule(Protocol):
    """What every part of DETR needs to know about its class logits."""

    loss_weight: float  # the weight of `loss_ce` in the Hungarian loss

    def num_logits(self, num_classes: int) -> int:
        """K, the class head's outputs for `num_classes` (max category id + 1)."""

    def init_head(self, head: nn.Linear) -> None:
        """Initialise the class head (in place) as the rule wants it at step 0."""

    def class_weights(self, num_classes: int) -> Optional[Tensor]:
        """Per-class weights of the loss (K,), kept by the criterion as a buffer; None: unweighted."""

    def loss(self, logits: Tensor, target_classes: Tensor, num_boxes: float | Tensor,
             class_weights: Optional[Tensor]) -> Tensor:
        """logits (B, Q, K); target_classes (B, Q), num_classes where a query is matched to nothing
        -> the classification loss, a scalar."""

    def cost(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        """logits (B, Q, K); target_ids (B, T) -> (B, Q, T): the matching cost of giving query q
        target t's class (lower = a better match)."""

    def scores(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """logits (B, Q, K) -> (scores, labels), each (B, Q): a detection's score and class."""

    def is_object(self, logits: Tensor) -> Tensor:
        """(B, Q) bool: whether the query claims an object (for `cardinality_error`)."""


class SoftmaxClassification:
    """DETR's rule: a softmax over num_classes + 1 logits, the last one "no object"."""

    loss_weight = 1.0

    def __init__(self, eos_coef: float = 0.1):
        # "no object" is down-weighted in the loss (paper section 4: by 10), against class imbalance:
        # most queries are matched to nothing
        self.eos_coef = eos_coef

    def num_logits(self, num_classes: int) -> int:
        return num_classes + 1

    def init_head(self, head: nn.Linear) -> None:
        pass                                                     # PyTorch's default, as the official code

    def class_weights(self, num_classes: int) -> Tensor:
        weights = torch.ones(num_classes + 1)                    # (K,)
        weights[-1] = self.eos_coef
        return weights

    def loss(self, logits: Tensor, target_classes: Tensor, num_boxes: float | Tensor,
             class_weights: Optional[Tensor]) -> Tensor:
        """Cross-entropy averaged over every query (weighted by `class_weights`); `num_boxes` is not used."""
        return F.cross_entropy(logits.transpose(1, 2), target_classes, class_weights)

    def cost(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        # -p instead of -log p: on the same scale as the box costs (the official matcher's choice)
        prob = logits.softmax(-1)                                                   # (B, Q, K)
        return -prob.gather(2, target_ids[:, None, :].expand(-1, logits.shape[1], -1))  # (B, Q, T)

    def scores(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        return logits.softmax(-1)[..., :-1].max(-1)              # "no object" excluded

    def is_object(self, logits: Tensor) -> Tensor:
        return logits.argmax(-1) != logits.shape[-1] - 1
