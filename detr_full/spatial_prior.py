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
- the first decoder layer's cross-attention logits get log G = -((x - cx)^2 / (w/2)^2 +
  (y - cy)^2 / (h/2)^2) / 2 for the token at (x, y) (its centre, normalised to the image's valid,
  unpadded region), the same for every head;
- each layer predicts its box relative to its reference: box = sigmoid(bbox_embed(hs) + logit(ref)),
  and that box (detached) is the next layer's reference: the prior is refined layer by layer, as
  DAB-DETR refines its anchor boxes.
SMCA predicts the centre and scale from each query's content and per head; here layer 0's are
per-query parameters, a learned "where to look first".
Used through `DETRConfig.spatial_prior` (off = the official DETR); the reference boxes add one
`spatial_prior.reference.weight` (Q, 4) tensor to the state dict. With `query_selection` the first
boxes come from the encoder instead, per image (query_selection.py), and there is no such tensor.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from detr_full.transformer import Refine


MIN_SIZE = 0.02  # the Gaussian never narrows below ~1/50 of the image (a predicted box can shrink to 0)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


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
    """Learned reference boxes (Q, 4) and the Gaussian cross-attention bias they give."""

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

    def decoding(self, bbox_embed: nn.Module, num_queries: int, mask: Tensor,
                 leading: Optional[Tensor] = None,
                 position: Optional[Callable[[Tensor], Tensor]] = None,
                 initial: Optional[Tensor] = None, fine_mask: Optional[Tensor] = None) -> "RefinedPrior":
        """The prior for one forward pass of `num_queries` queries over padding `mask` (B, h, w);
        `leading` (B, N, 4): the reference boxes of N more queries decoded before them (denoising);
        `position`: makes every layer's query positions from its reference boxes (anchor queries);
        `initial` (B, Q, 4): this pass's first reference boxes instead of the learned ones;
        `fine_mask` (B, h2, w2): the refined layers also attend to a finer level (fine_memory.py)."""
        reference = self.boxes(num_queries).expand(len(mask), -1, -1) if initial is None else initial  # (B, Q, 4)
        if leading is not None:
            reference = torch.cat([leading, reference], 1)                       # (B, N + Q, 4)
        return RefinedPrior(reference, bbox_embed, mask, position, fine_mask)


class RefinedPrior:
    """One forward pass's reference boxes, refined layer by layer: layer 0 looks around the learned
    boxes, layer l + 1 around the boxes layer l predicts (detached, as DAB-DETR and Deformable
    DETR's iterative refinement do, so each layer's box loss trains that layer's offsets only)."""

    def __init__(self, reference: Tensor, bbox_embed: nn.Module, mask: Tensor,
                 position: Optional[Callable[[Tensor], Tensor]] = None,
                 fine_mask: Optional[Tensor] = None):                            # reference (B, Q, 4)
        self.bbox_embed, self.mask, self.position, self.fine_mask = bbox_embed, mask, position, fine_mask
        self.references = [reference]                                            # [(B, Q, 4)] per layer

    def query_position(self) -> Optional[Tensor]:
        """(B, Q, D): the first layer's query positions, made from the references (None without `position`)."""
        return None if self.position is None else self.position(self.references[0])

    def hooks(self) -> tuple[Tensor, Refine]:
        """(memory_bias, refine) for `Transformer.forward`."""
        return SpatialPrior.attention_bias(self.references[0], self.mask), self._refine

    def _refine(self, layer_output: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """layer_output (B, Q, D), normalised -> the next layer's bias around this layer's boxes,
        and its query positions made from them (None without `position`)."""
        boxes = (self.bbox_embed(layer_output) + inverse_sigmoid(self.references[-1])).sigmoid()
        self.references.append(boxes.detach())
        position = None if self.position is None else self.position(self.references[-1])
        bias = SpatialPrior.attention_bias(self.references[-1], self.mask)      # (B, Q, L)
        if self.fine_mask is not None:                                           # (B, Q, L + L2)
            bias = torch.cat([bias, SpatialPrior.attention_bias(self.references[-1], self.fine_mask)], -1)
        return bias, position

    def stacked_references(self) -> Tensor:
        """(layers, B, Q, 4): the reference each decoder layer predicted its boxes from."""
        return torch.stack(self.references)
