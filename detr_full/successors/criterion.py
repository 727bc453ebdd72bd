"""SuccessorCriterion: DETR's Hungarian loss (detr_full/criterion.py) plus the terms that the
successors' outputs add, for the composed model (model.py).

- query groups (group_detr.py): in training the outputs hold K groups of Q queries; each group is
  matched and scored on its own and the terms averaged;
- `enc_outputs`, the encoder tokens' proposals (query_selection.py): the same Hungarian loss,
  suffix `_enc`, matched one-to-many with `proposal_copies` > 1 (one_to_many.py);
- `dn_outputs`, the denoising queries (denoising.py): their own terms, `loss_dn_*`.
On outputs with none of these it is exactly SetCriterion.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from detr_full.classification import ClassificationRule
from detr_full.criterion import SetCriterion
from detr_full.matcher import HungarianMatcher, PaddedTargets
from detr_full.successors.denoising import denoising_losses
from detr_full.successors.group_detr import average_groups, split_groups
from detr_full.successors.one_to_many import repeat_targets


class SuccessorCriterion(SetCriterion):
    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 eos_coef: float = 0.1, classification: Optional[ClassificationRule] = None,
                 num_queries: Optional[int] = None, proposal_copies: int = 1):
        """num_queries: Q, the queries of one group, when the model trains query groups (None: no groups);
        proposal_copies: the tokens each object is matched to in the proposals' loss (one_to_many.py)."""
        super().__init__(num_classes, matcher, weight_dict, eos_coef, classification)
        self.num_queries, self.proposal_copies = num_queries, proposal_copies

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        self.check_targets(targets)
        num_boxes, padded = self.num_boxes(targets), PaddedTargets.of(targets)
        if self.num_queries is not None and outputs["pred_logits"].shape[1] > self.num_queries:   # query groups
            losses = average_groups([self.readout_losses(g, padded, num_boxes)
                                     for g in split_groups(outputs, self.num_queries)])
        else:
            losses = self.readout_losses(outputs, padded, num_boxes)
        if "enc_outputs" in outputs:                                          # the encoder tokens' proposals
            enc = outputs["enc_outputs"]
            logits, boxes = enc["pred_logits"][None], enc["pred_boxes"][None]   # one readout: (1, B, L, .)
            copies = self.proposal_copies
            repeated = padded if copies == 1 else PaddedTargets.of(repeat_targets(targets, copies))
            (enc_losses,) = self.matched_losses(logits, boxes, repeated, self.matcher.match_layers(logits, boxes, repeated),
                                                num_boxes * copies, with_class_error=False)
            losses.update({f"{k}_enc": v for k, v in enc_losses.items()})
        if "dn_outputs" in outputs:                                           # the denoising queries
            losses.update(denoising_losses(outputs["dn_outputs"], self.classification, self.weight_dict))
        return losses
