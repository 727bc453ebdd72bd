"""The conditional spatial query (Conditional DETR: Meng et al. 2021, "Conditional DETR for Fast
Training Convergence", ICCV 2021, arXiv 2108.06152).

Why DETR's cross-attention learns slowly to look at the right place: a query and a key are compared
by one dot product of (content + position) vectors, so where a query looks and what it looks for
are mixed, and the positional part has to be found by training from a free query embedding.
Conditional DETR splits the comparison into two: the query is its content beside a spatial query,
the key its content beside its position, so the attention logit is a content term plus a spatial
term. The spatial query comes from the query's reference point s (the centre of the box it looks
at): the sine embedding of s, scaled element-wise by lambda = FFN(f), a transform of the decoder's
embedding f of the layer before (1 at the first layer), then projected. The FFN lets each query
widen or narrow where it looks, and which way, from what it has seen.

Our version, a plug-in of the composed model (model.py) through an attention prior
(reference_boxes.py), on top of the reference boxes the spatial prior refines layer by layer:
- s is the centre of this layer's reference box (Conditional DETR's s is learned per query and
  fixed; here it follows the box each layer predicted);
- the spatial term, per head h: logit += <W_q (lambda * sine(s))_h, W_k (pos_k)_h> / sqrt(D/H), with
  pos_k the position encoding of key k (fine_memory's tokens too) and W_q, W_k new projections:
  exactly the second half of the paper's concatenated dot product, added to the attention logits;
- the content term stays DETR's: (content + query position) against (memory + key position), and
  it is scaled by 1/sqrt(D/H) where the paper scales the concatenation by 1/sqrt(2D/H). The paper
  also drops the query position from the content term after the first layer.
Used through `DETRConfig.conditional` (needs spatial_prior; off = the official DETR); adds
`conditional.*` parameters to the state dict.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from detr_full.detr import MLP
from detr_full.successors.anchor_queries import box_sine_embedding
from detr_full.successors.reference_boxes import AttentionPrior
from detr_full.transformer import Memory


class ConditionalSpatialQuery(nn.Module):
    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        if d_model % 4 or d_model % nhead:
            raise ValueError(f"the conditional spatial query needs hidden_dim divisible by 4 and by nheads; got "
                             f"{d_model} and {nhead}.")
        self.d_model, self.nhead = d_model, nhead
        self.query_scale = MLP(d_model, d_model, d_model, 2)     # lambda = FFN(f)
        self.query_proj = nn.Linear(d_model, d_model)            # W_q: the spatial query
        self.key_proj = nn.Linear(d_model, d_model)              # W_k: the keys' positional part

    def spatial_query(self, boxes: Tensor, previous: Optional[Tensor]) -> Tensor:
        """boxes (B, Q, 4) cxcywh; previous (B, Q, D), the layer before's normalised output (None at
        the first layer) -> the spatial queries (B, H, Q, D/H)."""
        sine = box_sine_embedding(boxes[..., :2], self.d_model)                # (B, Q, D): D/2 for x, D/2 for y
        if previous is not None:
            sine = sine * self.query_scale(previous)                           # lambda = 1 at the first layer
        return self.query_proj(sine).unflatten(-1, (self.nhead, -1)).transpose(1, 2)  # (B, H, Q, D/H)

    def spatial_keys(self, levels: Sequence[Memory]) -> Tensor:
        """levels: the memory levels a layer reads, (B, L_i, .) each -> their positional keys (B, H, sum L_i, D/H)."""
        pos = torch.cat([m.pos for m in levels], 1) if len(levels) > 1 else levels[0].pos   # (B, L, D)
        return self.key_proj(pos).unflatten(-1, (self.nhead, -1)).transpose(1, 2)

    def prior(self, levels: Sequence[Sequence[Memory]]) -> AttentionPrior:
        """The spatial term as an attention prior over what each decoder layer reads (`levels[layer]`,
        its memory levels): -> (B, H, Q, L) per layer."""
        keys: dict[tuple[int, ...], Tensor] = {}               # layers that read the same levels share their keys

        def bias(layer: int, boxes: Tensor, previous: Optional[Tensor]) -> Tensor:
            ids = tuple(map(id, levels[layer]))
            if ids not in keys:
                keys[ids] = self.spatial_keys(levels[layer])                   # (B, H, L, D/H)
            k = keys[ids]
            return self.spatial_query(boxes, previous) @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, H, Q, L)
        return bias
