"""Query selection: the decoder's first reference boxes are proposals made by the encoder's tokens.

With the spatial prior (spatial_prior.py) each query starts from a learned box, the same for every
image: a "where to look first" averaged over the training set. On an image with objects
elsewhere, the first decoder layer looks at empty background and the later layers must move the
box a long way. Two-stage Deformable DETR (Zhu et al. 2021, arXiv 2010.04159, section 4.2) and
DINO's mixed query selection (Zhang et al. 2022, arXiv 2203.03605, section 3.3) start instead
from the encoder: every encoder token predicts a class and a box near its own cell, as a
one-stage detector does, and the Q tokens most confident of holding an object give the Q
queries' reference boxes for this image. The decoder then refines boxes that already sit on
objects.

Our version:
- token t at cell centre (x, y) (normalised to the image's valid region, `token_centres`)
  predicts logits (K) with its own class head and a box sigmoid(bbox_embed(m_t) + logit(anchor_t)),
  anchor_t = (x, y, 2 cells, 2 cells);
- these proposals get the Hungarian loss of the decoder's outputs (suffix `_enc`): matched
  tokens learn their object's class and box, the others "no object";
- the Q tokens with the highest object probability (padding excluded) give the reference boxes,
  detached, as in both papers: the decoder's losses do not move the proposals;
- optionally (`selection_nms`), a proposal that overlaps a better one is taken only when fewer than
  Q others are left. A large object is seen by many tokens, and without it several queries can
  start on the same object while a small one gets none. This is the non-maximum suppression a
  region proposal network applies before keeping its top proposals (Faster R-CNN); the decoder
  stays NMS-free;
- the queries' content stays learned (DINO's "mixed" selection); so do their positions, unless
  `anchor_queries` makes them from the selected boxes, as DINO does (the shapes recipe does).
Used through `DETRConfig.query_selection` (needs spatial_prior; off = the official DETR).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detr_full.box_ops import box_cxcywh_to_xyxy
from detr_full.classification import ClassificationRule
from detr_full.successors.reference_boxes import inverse_sigmoid
from detr_full.successors.spatial_prior import token_centres, valid_cells


ANCHOR_CELLS = 2.0  # a token's anchor box is this many cells wide and high, centred on the token


class Proposals(NamedTuple):
    logits: Tensor     # (B, L, K) every token's class logits
    boxes: Tensor      # (B, L, 4) every token's box, cxcywh in [0, 1]
    reference: Tensor  # (B, Q, 4) the selected tokens' boxes, detached: the decoder's first references


def token_anchors(mask: Tensor) -> Tensor:
    """mask (B, h, w) True on padding -> (B, h*w, 4) cxcywh: a box of ANCHOR_CELLS cells around each
    token's centre, in units of the image's valid region (padded tokens' centres are > 1)."""
    centres = token_centres(mask)                                                  # (B, L, 2)
    valid_w, valid_h = valid_cells(mask)                                           # (B,)
    size = torch.stack([ANCHOR_CELLS / valid_w, ANCHOR_CELLS / valid_h], -1).clamp(max=1.0)  # (B, 2)
    return torch.cat([centres, size[:, None, :].expand_as(centres)], -1)


class QuerySelection(nn.Module):
    """Per-token class and box heads on the encoder's memory, and the top-Q selection."""

    def __init__(self, d_model: int, classification: ClassificationRule, num_classes: int, num_queries: int,
                 bbox_embed: nn.Module, nms_iou: float = 0.0):
        """classification: the decoder's rule (classification.py), so the proposals are scored and
        trained as its detections are; bbox_embed: a box head (D -> 4) of its own; nms_iou > 0: a
        proposal overlapping a better one by more IoU than this is taken only if fewer than Q
        proposals are left."""
        super().__init__()
        self.num_queries, self.classification, self.nms_iou = num_queries, classification, nms_iou
        self.norm = nn.LayerNorm(d_model)
        self.class_embed = nn.Linear(d_model, classification.num_logits(num_classes))   # K, as the decoder's
        classification.init_head(self.class_embed)
        self.bbox_embed = bbox_embed

    def object_probability(self, logits: Tensor) -> Tensor:
        """(..., K) -> (...): a proposal's score as PostProcess scores a detection."""
        return self.classification.scores(logits)[0]

    def forward(self, memory: Tensor, mask: Tensor) -> Proposals:
        """memory (B, L, D), the encoder's output; mask (B, h, w) True on padding, L = h * w."""
        if memory.shape[1] < self.num_queries:
            raise ValueError(f"query_selection picks {self.num_queries} of the encoder's {memory.shape[1]} tokens: "
                             "the feature map is too small. Use larger images or fewer queries.")
        x = self.norm(memory)
        logits = self.class_embed(x)                                                    # (B, L, K)
        boxes = (self.bbox_embed(x) + inverse_sigmoid(token_anchors(mask))).sigmoid()  # (B, L, 4)
        with torch.no_grad():
            score = self.object_probability(logits).masked_fill(mask.flatten(1), -1.0)  # (B, L)
            priority = self._diverse_top(boxes, score) if self.nms_iou > 0 else score     # (B, L)
            top = priority.topk(self.num_queries, dim=1).indices                           # (B, Q)
        reference = boxes.detach().gather(1, top[:, :, None].expand(-1, -1, 4))        # (B, Q, 4)
        return Proposals(logits, boxes, reference)

    def _diverse_top(self, boxes: Tensor, score: Tensor) -> Tensor:
        """boxes (B, L, 4), score (B, L) in [0, 1], -1 on padding -> (B, L) priorities: non-maximum
        suppression's survivors (per image) by score, then the suppressed tokens by score, padding last."""
        image = torch.arange(len(score), device=score.device)[:, None].expand_as(score)  # (B, L)
        kept = torch.zeros_like(score)
        kept.view(-1)[batched_nms(box_cxcywh_to_xyxy(boxes).flatten(0, 1), score.flatten(), image.flatten(),
                                  self.nms_iou)] = 2.0
        return torch.where(score < 0, score, score + kept)                             # (B, L)
