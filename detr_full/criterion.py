"""SetCriterion: the Hungarian loss (paper eq. 2) and the logged error rates.

Dimension key: B batch, Q queries, K = num_classes + 1, N matched pairs in the batch.

For each decoder layer's readout: match predictions to targets, then
- loss_ce: cross-entropy over all queries, unmatched ones labelled "no object", whose weight is
  `eos_coef` (the paper's /10 against class imbalance);
- loss_bbox: L1 between matched boxes (normalised cxcywh), summed / num_boxes;
- loss_giou: 1 - GIoU of matched boxes, summed / num_boxes;
- cardinality_error: |#queries not predicting "no object" - #targets|, averaged over images
  (logging only, no gradient);
- class_error: 100 - top-1 accuracy on matched queries (final layer only; logging only).
Auxiliary layers get the same terms with suffix `_i`. Unlike the official code, the three losses
are computed explicitly, not dispatched by name, targets are validated with a clear error, and
the classification rule (classification.py: DETR's softmax with "no object", or a successor's)
is an object the criterion is given.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detr_full.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from detr_full.classification import ClassificationRule, SoftmaxClassification
from detr_full.matcher import HungarianMatcher


def box_losses(src_boxes: Tensor, target_boxes: Tensor, num_boxes: float | Tensor) -> tuple[Tensor, Tensor]:
    """L1 and 1 - GIoU between paired (N, 4) cxcywh boxes, each summed and divided by num_boxes."""
    l1 = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
    giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))  # (N,)
    return l1, (1 - giou).sum() / num_boxes


class SetCriterion(nn.Module):
    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 eos_coef: float = 0.1, classification: Optional[ClassificationRule] = None):
        """`classification`: how the class logits are scored (classification.py; None: DETR's softmax
        rule with "no object" weighted by `eos_coef`)."""
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict, self.eos_coef = num_classes, matcher, weight_dict, eos_coef
        self.classification = classification or SoftmaxClassification(eos_coef)
        # the official `empty_weight`: 1 per class, eos_coef for "no object" (None when the rule weights no class)
        self.register_buffer("empty_weight", self.classification.class_weights(num_classes))

    def check_targets(self, targets: list[dict]) -> None:
        for i, t in enumerate(targets):
            labels, boxes = t.get("labels"), t.get("boxes")
            if labels is None or boxes is None:
                raise ValueError(f"targets[{i}] needs 'labels' (T,) int64 and 'boxes' (T, 4) normalised cxcywh; "
                                 f"it has keys {sorted(t)}.")
            if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
                raise ValueError(f"targets[{i}]: 'boxes' must be (T, 4) and 'labels' (T,); got "
                                 f"{tuple(boxes.shape)} and {tuple(labels.shape)}.")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"targets[{i}]['labels'] contains {labels.max().item()}, outside 0.."
                                 f"{self.num_classes - 1}: num_classes must be the max category id + 1.")
            if (boxes[:, 2:] < 0).any():
                j = int((boxes[:, 2:] < 0).any(-1).nonzero()[0, 0])
                raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} has a negative width or "
                                 "height. Target boxes are normalised (cx, cy, w, h) with w, h >= 0; "
                                 "drop degenerate boxes before training.")

    def layer_losses(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                     num_boxes: float, with_class_error: bool) -> dict[str, Tensor]:
        """The loss terms of one decoder layer's readout, given its matching."""
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]  # (B, Q, K), (B, Q, 4)
        device = logits.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)  # (N,)
        query_idx = torch.cat([q for q, _ in indices]).to(device)          # (N,)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])  # (N,)
        matched_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])    # (N, 4)

        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = matched_labels
        losses = {"loss_ce": self.classification.loss(logits, target_classes, num_boxes, self.empty_weight)}
        if with_class_error:
            with torch.no_grad():
                if len(matched_labels):
                    correct = logits[batch_idx, query_idx].argmax(-1) == matched_labels
                    losses["class_error"] = 100 - 100 * correct.float().mean()
                else:  # nothing to classify counts as all wrong, as in the official code
                    losses["class_error"] = torch.tensor(100.0, device=device)

        src_boxes = pred_boxes[batch_idx, query_idx]                       # (N, 4)
        losses["loss_bbox"], losses["loss_giou"] = box_losses(src_boxes, matched_boxes, num_boxes)

        with torch.no_grad():
            num_predicted = self.classification.is_object(logits).sum(1).float()     # (B,)
            num_targets = torch.tensor([float(len(t["labels"])) for t in targets], device=device)
            losses["cardinality_error"] = F.l1_loss(num_predicted, num_targets)
        return losses

    def num_boxes(self, targets: list[dict], device: torch.device) -> float:
        """The number of target boxes per process (averaged over all processes), at least 1 (empty batches):
        what the box losses are divided by."""
        num_boxes = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        return num_boxes.clamp(min=1).item()

    def readout_losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        """The terms of the last decoder layer's readout, and with suffix `_i` of the earlier layers'."""
        losses = self.layer_losses(outputs, targets, self.matcher(outputs, targets), num_boxes,
                                   with_class_error=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.layer_losses(aux, targets, self.matcher(aux, targets), num_boxes,
                                           with_class_error=False)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) cxcywh, optional aux_outputs;
        targets: B dicts with labels (T_b,) int64 and boxes (T_b, 4) normalised cxcywh."""
        self.check_targets(targets)
        return self.readout_losses(outputs, targets, self.num_boxes(targets, outputs["pred_logits"].device))

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated; class_error and cardinality_error have no weight."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)
