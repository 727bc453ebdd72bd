"""A Gaussian spatial prior on the decoder's cross-attention, around a learned box per query.

Why DETR is slow to start: a decoder query finds its object only through attention, and at
initialisation that attention is spread over the whole image, so a query's output is the average
of everything and it cannot tell one object from another. SMCA (Gao et al. 2021, "Fast
Convergence of DETR with Spatially Modulated Co-Attention", arXiv 2101.07448) adds a Gaussian
map around a predicted box to the cross-attention logits, which makes every query look at one
region from the first step; it reports DETR's 500-epoch accuracy in 50 epochs. Anchor-based
successors (Conditional DETR, DAB-DETR) get the same locality through positional queries.

Our version, a simple form of the idea: each query owns a learned reference box (cx, cy, w, h),
initialised on a grid over the image, and
- every decoder layer's cross-attention logits get log G = -((x - cx)^2 / (w/2)^2 +
  (y - cy)^2 / (h/2)^2) / 2 for the token at (x, y) (its centre, normalised to the image's valid,
  unpadded region), the same for every head, around that layer's reference box;
- each layer predicts its box relative to its reference, and that box is the next layer's
  reference (reference_boxes.py): the prior is refined layer by layer, as DAB-DETR refines its
  anchor boxes.
SMCA predicts the centre and scale from each query's content and per head; here layer 0's are
per-query parameters, a learned "where to look first".
Used through `DETRConfig.spatial_prior` (off = the official DETR); the reference boxes add one
`spatial_prior.reference.weight` (Q, 4) tensor to the state dict. With `query_selection` the first
boxes come from the encoder instead, per image (query_selection.py), and there is no such tensor.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from detr_full.successors.reference_boxes import AttentionPrior, inverse_sigmoid

MIN_SIZE = 0.02  # the Gaussian never narrows below ~1/50 of the image (a predicted box can shrink to 0)


def grid_boxes(num_queries: int, size: float = 0.3) -> Tensor:
    """(Q, 4) cxcywh: the centres of a near-square grid over [0, 1]^2, every box size x size."""
    cols = math.ceil(math.sqrt(num_queries))
    rows = math.ceil(num_queries / cols)
    i = torch.arange(num_queries)
    cx = (i % cols + 0.5) / cols
    cy = (i // cols + 0.5) / rows
    return torch.stack([cx, cy, torch.full_like(cx, size), torch.full_like(cx, size)], 1)


def valid_cells(mask: Tensor) -> tuple[Tensor, Tensor]:
    """mask (B, h, w) True on padding -> each image's unpadded width and height in cells, (B,) each."""
    return (~mask[:, 0, :]).sum(1).clamp(min=1).float(), (~mask[:, :, 0]).sum(1).clamp(min=1).float()


def token_centres(mask: Tensor) -> Tensor:
    """mask (B, h, w) True on padding -> (B, h*w, 2) token centres (x, y), normalised by each
    image's valid (unpadded) width and height; padded tokens get values > 1."""
    valid_w, valid_h = valid_cells(mask)                                       # (B,)
    h, w = mask.shape[1:]
    y = (torch.arange(h, device=mask.device) + 0.5)[None, :] / valid_h[:, None]  # (B, h)
    x = (torch.arange(w, device=mask.device) + 0.5)[None, :] / valid_w[:, None]  # (B, w)
    return torch.stack([x[:, None, :].expand(-1, h, -1), y[:, :, None].expand(-1, -1, w)], -1).flatten(1, 2)


class SpatialPrior(nn.Module):
    """Learned reference boxes (Q, 4) and the Gaussian cross-attention bias around a layer's boxes."""

    def __init__(self, num_queries: int, learned: bool = True):
        """learned=False: no learned boxes; every forward pass brings its own (query_selection.py)."""
        super().__init__()
        self.reference = nn.Embedding(num_queries, 4) if learned else None  # logits of (cx, cy, w, h)
        if learned:
            with torch.no_grad():
                self.reference.weight.copy_(inverse_sigmoid(grid_boxes(num_queries)))

    @property
    def learned(self) -> bool:
        """Whether the first reference boxes are parameters (False: each forward pass brings its own)."""
        return self.reference is not None

    def boxes(self, num_queries: int) -> Tensor:
        """The first `num_queries` learned reference boxes, (Q, 4) cxcywh in [0, 1]."""
        if not self.learned:
            raise ValueError("this model has no learned reference boxes: with query_selection each image's first "
                             "boxes are the encoder's proposals (the model's enc_outputs; query_selection.py).")
        return self.reference.weight[:num_queries].sigmoid()

    @staticmethod
    def attention_bias(reference: Tensor, mask: Tensor) -> Tensor:
        """reference (Q, 4) or (B, Q, 4) cxcywh; mask (B, h, w) -> (B, Q, h*w) log-Gaussian logit bias."""
        xy = token_centres(mask)                                                 # (B, L, 2)
        reference = reference.expand(len(xy), -1, -1) if reference.dim() == 2 else reference  # (B, Q, 4)
        centre = reference[:, :, None, :2]                                       # (B, Q, 1, 2)
        half_size = reference[:, :, None, 2:].clamp(min=MIN_SIZE) / 2            # (B, Q, 1, 2)
        z = (xy[:, None, :, :] - centre) / half_size                             # (B, Q, L, 2)
        return -0.5 * (z ** 2).sum(-1)                                           # (B, Q, L)

    @staticmethod
    def prior(grids: Sequence[Sequence[Tensor]]) -> AttentionPrior:
        """The Gaussian bias as an attention prior (reference_boxes.py): `grids[layer]` are the padding
        masks (B, h, w) of the token grids that decoder layer reads, in the order of its memory."""
        def bias(layer: int, boxes: Tensor, previous: Optional[Tensor]) -> Tensor:
            parts = [SpatialPrior.attention_bias(boxes, grid) for grid in grids[layer]]   # (B, Q, L_i) each
            return parts[0] if len(parts) == 1 else torch.cat(parts, -1)              # (B, Q, sum L_i)
        return bias
