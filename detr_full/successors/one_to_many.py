"""One-to-many supervision of the encoder's proposals: each object matched to k tokens, not one.

Why: with query selection (query_selection.py) every encoder token proposes a box, and the
proposals get DETR's Hungarian loss: each object is matched to exactly one of the L tokens, all the
others are trained towards "no object". On an image with a few objects that is enough. On a dense
one (tree crowns: 30-60 objects among 625 tokens) the proposal head learns slowly: each object
teaches one token to say "here", and its neighbours, which see almost the same crown, are told
"nothing". One-stage detectors (FCOS, RetinaNet) make every token near an object a positive for
that reason. H-DETR (Jia et al. 2023, arXiv 2207.13080) and Co-DETR (Zong et al. 2023, arXiv
2211.12860) bring that back into DETR as extra one-to-many supervision beside the one-to-one
matching; DINO-style query selection is where it costs nothing: the selection's NMS
(`selection_nms`) already keeps two proposals of one object from both becoming queries, and the
decoder's queries stay matched one-to-one.

Two uses here. `OneToManyMatcher` is the Hungarian matcher on the targets repeated k times, for the
decoder's own loss: notebook 15's ablation of the paper's one-to-one matching (each object gets k
queries, so the model learns to answer it k times, and needs NMS). And with `proposal_copies = k` the proposals' loss (the `_enc` terms) matches the targets
repeated k times, so the Hungarian matcher gives each object up to k tokens; the box terms are
normalised by k times the number of objects, so each object weighs as much as before. The
decoder's loss is untouched. Used through `DETRConfig.proposal_copies` (needs query_selection;
1 = off).
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
