"""One-to-many matching: each object matched to k queries or tokens, not one.

Why: DETR's Hungarian loss matches each object to exactly one prediction and trains all the others
towards "no object". For the decoder's queries that is the point (one query per object, no NMS;
notebook 15 trains the opposite to show it). For the encoder's proposals of query selection
(query_selection.py), where every token proposes a box, it can be slow: on a dense image (tree
crowns: 30-60 objects among 625 tokens) each object teaches one token to say "here", and its
neighbours, which see almost the same crown, are told "nothing". One-stage detectors (FCOS,
RetinaNet) make every token near an object a positive for that reason; H-DETR (Jia et al. 2023,
arXiv 2207.13080) and Co-DETR (Zong et al. 2023, arXiv 2211.12860) bring that back into DETR as
extra one-to-many supervision beside the one-to-one matching. On the proposals it costs nothing:
the selection's NMS (`selection_nms`) keeps two proposals of one object from both becoming
queries, and the decoder's queries stay matched one-to-one.

Two uses here:
- `OneToManyMatcher`, the Hungarian matcher on the targets repeated k times, in place of the
  decoder's matcher: notebook 15's ablation of one-to-one matching;
- `DETRConfig.proposal_copies = k` (needs query_selection; 1 = off): the proposals' loss (the `_enc`
  terms, successors/criterion.py) matches the targets repeated k times, the box terms normalised by
  k times the number of objects, so each object weighs as much as before; the decoder's loss is
  untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detr_full.matcher import HungarianMatcher, Matching, PaddedTargets


def repeat_targets(targets: list[dict], copies: int) -> list[dict]:
    """Each image's targets with every object `copies` times (labels (k*T,), boxes (k*T, 4)), other keys kept."""
    return [{**t, "labels": t["labels"].repeat(copies), "boxes": t["boxes"].repeat(copies, 1)} for t in targets]


class OneToManyMatcher(HungarianMatcher):
    """The Hungarian matcher on the targets repeated `copies` times: each object gets up to `copies`
    queries (fewer when an image has more objects than queries / copies). Target indices refer to the
    original targets, so the criterion needs no change. Overrides `match_layers`, which the criterion
    calls for every layer at once and `forward` calls for one."""

    def __init__(self, copies: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.copies = copies

    @torch.no_grad()
    def match_layers(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict] | PaddedTargets) -> Matching:
        padded = targets if isinstance(targets, PaddedTargets) else PaddedTargets.of(targets)
        originals = [{"labels": padded.labels[b, :n], "boxes": padded.boxes[b, :n]} for b, n in enumerate(padded.sizes)]
        matching = super().match_layers(pred_logits, pred_boxes, PaddedTargets.of(repeat_targets(originals, self.copies)))
        sizes = torch.tensor([max(1, n) for n in padded.sizes], device=matching.target_idx.device)   # (B,)
        return matching._replace(target_idx=matching.target_idx % sizes[matching.batch_idx])    # copy -> object
