"""Anchor-box queries (DAB-DETR: Liu et al. 2022, "DAB-DETR: Dynamic Anchor Boxes are Better
Queries for DETR", arXiv 2201.12329; Conditional DETR, Meng et al. 2021, arXiv 2108.06152, is the
step before it).

In DETR a query's position (`query_embed`) is a free vector that is added to the query before
every attention. Nothing ties it to a place in the image: what a query learns to look at, and
its box, are found only by training, slowly. Conditional DETR makes the cross-attention's
positional part from a reference point (a 2-d location per query); DAB-DETR goes one step
further and makes the whole positional query from a 4-d anchor box (cx, cy, w, h): a sine
embedding of the box (the encoding of notebook 03, applied to each coordinate) through a small
MLP. The anchor is refined by every decoder layer, and the next layer's positional query is made
from the refined box, so "where the query looks" and "what box it predicts" are one and the same.

Our version builds on the reference boxes (reference_boxes.py: a box per query, refined layer by
layer) and the spatial prior (spatial_prior.py: the cross-attention biased towards the box, the role
of DAB-DETR's width-and-height modulated attention). With `DETRConfig.anchor_queries`:
- every decoder layer's positional query is `AnchorQueries(box)`, made from that layer's
  reference box (denoising queries too: their noised box is their anchor);
- `query_embed` becomes the queries' learned content, the decoder's input instead of zeros.
Off (the default) the model is the official DETR; on, it adds `anchor_queries.*` to the state dict.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """boxes (..., k) in [0, 1] (a box's k = 4 coordinates cx, cy, w, h, or a point's 2) -> (..., dim):
    dim/k sine and cosine features per coordinate, the encoding of notebook 03 applied to each."""
    n = dim // boxes.shape[-1]                                                 # features per coordinate
    freqs = temperature ** (2 * torch.arange(n // 2, device=boxes.device) / n)  # (n/2,)
    x = boxes[..., None] * 2 * math.pi / freqs                                 # (..., k, n/2)
    return torch.cat([x.sin(), x.cos()], -1).flatten(-2)                       # (..., k * n)


class AnchorQueries(nn.Module):
    """Positional queries from boxes: (..., 4) cxcywh -> (..., D), an MLP on their sine embedding."""

    def __init__(self, d_model: int):
        super().__init__()
        if d_model % 8:
            raise ValueError(f"anchor queries need hidden_dim divisible by 8 (the box sine embedding); got {d_model}.")
        self.d_model = d_model
        self.position_head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))

    def forward(self, boxes: Tensor) -> Tensor:
        return self.position_head(box_sine_embedding(boxes, self.d_model))
