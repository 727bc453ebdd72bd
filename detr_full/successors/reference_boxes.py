"""Reference boxes: the boxes a successor's decoder refines layer by layer, and what each layer's
queries are told from them.

In DETR a decoder layer's queries know nothing of where they look: their positions are learned
vectors and their attention is free. DETR's successors give every query a reference box (Anchor
DETR, DAB-DETR, Deformable DETR): layer 0 starts from a box (learned: spatial_prior.py; proposed by
the encoder: query_selection.py; a noised ground-truth box: denoising.py), each layer predicts its
box relative to its reference, box = sigmoid(bbox_embed(hs) + logit(reference)), and that box,
detached, is the next layer's reference (DAB-DETR and Deformable DETR's iterative refinement: each
layer's box loss trains that layer's offsets only).

What the queries are told from their boxes, before every layer (`ReferenceBoxes` is the
transformer's `Guide`):
- a bias on the cross-attention logits, the sum of the model's attention priors (the Gaussian
  around the box, spatial_prior.py; the conditional spatial query, conditional.py);
- their positions, when the model makes them from the boxes (anchor_queries.py).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

# An attention prior: (decoder layer, its reference boxes (B, Q, 4) cxcywh, the previous layer's
# normalised output (B, Q, D) or None before the first) -> a bias on that layer's cross-attention
# logits over the tokens it reads, (B, Q, L) shared by the heads or (B, H, Q, L) per head.
AttentionPrior = Callable[[int, Tensor, Optional[Tensor]], Tensor]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class ReferenceBoxes:
    """One forward pass's reference boxes, refined layer by layer; called by the decoder before every
    layer (transformer.Guide)."""

    def __init__(self, first: Tensor, box_head: nn.Module, priors: Sequence[AttentionPrior] = (),
                 position: Optional[Callable[[Tensor], Tensor]] = None):
        """first (B, Q, 4) cxcywh: layer 0's boxes; box_head: the model's bbox_embed (D -> 4 offsets);
        priors: the cross-attention biases; position: boxes (B, Q, 4) -> query positions (B, Q, D)."""
        self.box_head, self.priors, self.position = box_head, priors, position
        self.boxes = [first]                                                  # [(B, Q, 4)] per layer

    def __call__(self, previous: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """previous (B, Q, D): the last layer's normalised output (None before the first layer) ->
        this layer's query positions (None: the model's own) and cross-attention bias (None: none)."""
        if previous is not None:                                              # refine: the box it predicted
            self.boxes.append((self.box_head(previous) + inverse_sigmoid(self.boxes[-1])).sigmoid().detach())
        layer, boxes = len(self.boxes) - 1, self.boxes[-1]
        bias = None
        for prior in self.priors:
            b = prior(layer, boxes, previous)
            bias = b if bias is None else _add(bias, b)
        return None if self.position is None else self.position(boxes), bias   # (B, Q, D) positions

    def predicted(self, offsets: Tensor) -> Tensor:
        """offsets (layers, B, Q, 4), every layer's bbox_embed output -> its boxes, cxcywh in [0, 1]."""
        return (offsets + inverse_sigmoid(torch.stack(self.boxes))).sigmoid()


def _add(a: Tensor, b: Tensor) -> Tensor:
    """Two biases, (B, Q, L) or (B, H, Q, L) each: the shared one broadcast over the heads."""
    if a.dim() == b.dim():
        return a + b
    return a[:, None] + b if a.dim() == 3 else a + b[:, None]
