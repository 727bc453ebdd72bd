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
is an object the criterion is given. Every layer is matched in one call (one transfer to the host
and one back, HungarianMatcher.match_layers), and nothing else is read back from the device: the
number of boxes comes from the targets' lengths, and in training the targets' values are checked
by the data pipeline, on the host (targets.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detr_full.box_ops import box_cxcywh_to_xyxy, giou_broadcast
from detr_full.classification import ClassificationRule, SoftmaxClassification
from detr_full.matcher import HungarianMatcher, Matching, PaddedTargets
from detr_full.targets import check_target_shapes, check_targets


def box_terms(src_boxes: Tensor, target_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Paired (N, 4) cxcywh boxes -> their L1 distances (N, 4) and GIoU (N,). Predicted boxes (a sigmoid's
    cxcywh) are valid by construction, target boxes are checked before (targets.py)."""
    l1 = F.l1_loss(src_boxes, target_boxes, reduction="none")                              # (N, 4)
    return l1, giou_broadcast(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))  # (N,)


def box_losses(src_boxes: Tensor, target_boxes: Tensor, num_boxes: float | Tensor) -> tuple[Tensor, Tensor]:
    """L1 and 1 - GIoU between paired (N, 4) cxcywh boxes, each summed and divided by num_boxes."""
    l1, giou = box_terms(src_boxes, target_boxes)
    return l1.sum() / num_boxes, (1 - giou).sum() / num_boxes


def stacked_readouts(outputs: dict) -> tuple[Tensor, Tensor]:
    """Every decoder layer's readout that `outputs` has, as (L, B, Q, K) logits and (L, B, Q, 4) boxes,
    the last layer last: the model's own stack (`decoder_layers`) when it returns one, else stacked here."""
    num_layers = 1 + len(outputs.get("aux_outputs", []))
    if "decoder_layers" in outputs:
        stacked = outputs["decoder_layers"]
        return stacked["pred_logits"][-num_layers:], stacked["pred_boxes"][-num_layers:]
    readouts = outputs.get("aux_outputs", []) + [outputs]
    return (torch.stack([r["pred_logits"] for r in readouts]), torch.stack([r["pred_boxes"] for r in readouts]))


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
        # read the targets' values to check them (targets.py); a training run turns it off: its data
        # pipeline checks them on the host, where that costs nothing
        self.validate_targets = True

    def check_targets(self, targets: list[dict]) -> None:
        """The targets' shapes always; their values (label range, box sizes) while `validate_targets`."""
        if self.validate_targets:
            check_targets(targets, self.num_classes)
        else:
            check_target_shapes(targets)

    def num_boxes(self, targets: list[dict]) -> float:
        """The number of target boxes per process (averaged over all processes), at least 1 (empty batches):
        what the box losses are divided by. Counted from the targets' lengths, on the host."""
        count = float(sum(len(t["labels"]) for t in targets))
        if dist.is_available() and dist.is_initialized():
            total = torch.tensor([count])
            dist.all_reduce(total)
            count = total.item() / dist.get_world_size()
        return max(count, 1.0)

    def layer_losses(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                     num_boxes: float, with_class_error: bool) -> dict[str, Tensor]:
        """The loss terms of one decoder layer's readout, given its matching in the official format (B pairs
        (query_idx, target_idx), as HungarianMatcher.forward returns them)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        padded = PaddedTargets.of(targets)
        (losses,) = self.matched_losses(logits[None], boxes[None], padded, Matching.of(indices, logits.device),
                                        num_boxes, with_class_error)
        return losses

    def matched_losses(self, logits: Tensor, pred_boxes: Tensor, targets: PaddedTargets, matching: Matching,
                       num_boxes: float, with_class_error: bool) -> list[dict[str, Tensor]]:
        """The loss terms of L readouts, logits (L, B, Q, K) and pred_boxes (L, B, Q, 4) cxcywh, one dict per
        readout; class_error for the last one only (with_class_error). Every elementwise term is computed
        once for all matched pairs of all readouts, then summed readout by readout."""
        layer_idx, batch_idx, query_idx, target_idx, sizes = matching
        num_layers = len(logits)
        matched_labels = targets.labels[batch_idx, target_idx]                    # (N,)
        target_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[layer_idx, batch_idx, query_idx] = matched_labels           # (L, B, Q), "no object" elsewhere
        src_boxes = pred_boxes[layer_idx, batch_idx, query_idx]                    # (N, 4)
        l1, giou = box_terms(src_boxes, targets.boxes[batch_idx, target_idx])     # (N, 4), (N,)
        with torch.no_grad():                                                      # logged, never optimised
            num_predicted = self.classification.is_object(logits).sum(-1).float()   # (L, B)
            num_targets = torch.tensor(targets.sizes, dtype=torch.float, device=logits.device)   # (B,)
            cardinality = (num_predicted - num_targets).abs().mean(-1)             # (L,)
        class_error = None
        if with_class_error:                                                       # the last readout's
            start = len(matched_labels) - sizes[-1]
            class_error = self.class_error(logits[-1], matching.layer(num_layers - 1), matched_labels[start:])
        per_layer = []
        for layer, l1_part, giou_part, card in zip(range(num_layers), l1.split(sizes), (1 - giou).split(sizes),
                                                   cardinality):
            losses = {"loss_ce": self.classification.loss(logits[layer], target_classes[layer], num_boxes,
                                                          self.empty_weight)}
            if class_error is not None and layer == num_layers - 1:
                losses["class_error"] = class_error
            losses.update(loss_bbox=l1_part.sum() / num_boxes, loss_giou=giou_part.sum() / num_boxes,
                          cardinality_error=card)
            per_layer.append(losses)
        return per_layer

    @torch.no_grad()
    def class_error(self, logits: Tensor, matching: Matching, labels: Tensor) -> Tensor:
        """100 - top-1 accuracy of the matched queries of one readout: logits (B, Q, K), labels (N,)."""
        if not len(labels):         # nothing to classify counts as all wrong, as in the official code
            return torch.tensor(100.0, device=logits.device)
        correct = logits[matching.batch_idx, matching.query_idx].argmax(-1) == labels
        return 100 - 100 * correct.float().mean()

    def readout_losses(self, outputs: dict, targets: list[dict] | PaddedTargets, num_boxes: float
                       ) -> dict[str, Tensor]:
        """The terms of the last decoder layer's readout, and with suffix `_i` of the earlier layers'."""
        padded = targets if isinstance(targets, PaddedTargets) else PaddedTargets.of(targets)
        logits, boxes = stacked_readouts(outputs)                                  # (L, B, Q, .)
        matching = self.matcher.match_layers(logits, boxes, padded)                # every layer at once
        *earlier, final = self.matched_losses(logits, boxes, padded, matching, num_boxes, with_class_error=True)
        losses = dict(final)
        for i, layer_losses in enumerate(earlier):
            losses.update({f"{k}_{i}": v for k, v in layer_losses.items()})
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) cxcywh, optional aux_outputs (and the
        model's decoder_layers stack); targets: B dicts with labels (T_b,) int64 and boxes (T_b, 4)
        normalised cxcywh."""
        self.check_targets(targets)
        return self.readout_losses(outputs, targets, self.num_boxes(targets))

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated; class_error and cardinality_error have no weight."""
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)
