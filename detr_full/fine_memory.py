"""Fine memory: the decoder's refinement layers also attend to the backbone's stage before the last.

What limits DETR's boxes on small objects: every encoder token covers a `backbone_stride`-pixel
cell (16 px in the shapes recipe), so a 10-px object lies inside one token, and the box a query
predicts from such tokens is coarse. With the spatial prior and query selection the first
reference boxes already sit on the objects (measured on the second synthetic set: the decoder's
boxes had the IoU of the proposals they started from, 0.53 against 0.52; benchmarks/README.md),
so what a refinement layer lacks is finer evidence, not a better place to look. Deformable DETR
(Zhu et al. 2021, arXiv 2010.04159, section 4.1) gives its decoder every ResNet stage from stride 8
up, sampled around each reference box.

Our version, a plain-attention form of that idea for one more level:
- the backbone also returns the stage before its last (layer2 at stride 16: twice the resolution,
  half the channels), projected to D by a 1x1 convolution and a GroupNorm (Deformable DETR's input
  projection), with sine positions over the same normalised image and a learned level embedding;
- these tokens are not encoded (4x the tokens, and the encoder's cost is quadratic in them): they
  join the memory of the decoder layers after the first, whose cross-attention the spatial prior
  centres on the box the layer before predicted (the Gaussian bias covers both levels);
- the first decoder layer reads the encoded memory only, as without the option.
Used through `DETRConfig.fine_memory` (needs spatial_prior and at least two decoder layers; off =
the official DETR). It adds `fine_memory.*` parameters to the state dict.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from detr_full.position_encoding import PositionEmbeddingSine


class FineTokens(NamedTuple):
    """The fine level as decoder memory: what `Transformer.decode` appends to the encoder's output."""
    memory: Tensor  # (B, L2, D)
    mask: Tensor    # (B, L2), True on padding
    pos: Tensor     # (B, L2, D)


class FineMemory(nn.Module):
    def __init__(self, in_channels: int, d_model: int):
        super().__init__()
        self.input_proj = nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=1),
                                        nn.GroupNorm(min(32, d_model), d_model))
        self.level_embed = nn.Parameter(torch.zeros(d_model))          # tells the two levels apart
        self.position = PositionEmbeddingSine(d_model // 2, normalize=True)

    def forward(self, fine: Tensor, mask: Tensor) -> FineTokens:
        """fine (B, C', 2h, 2w) the backbone's earlier stage; mask (B, 2h, 2w) True on padding."""
        memory = self.input_proj(fine).flatten(2).transpose(1, 2)          # (B, L2, D)
        pos = self.position(mask).to(memory.dtype).flatten(2).transpose(1, 2) + self.level_embed  # (B, L2, D)
        return FineTokens(memory, mask.flatten(1), pos)
