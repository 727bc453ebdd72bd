"""Fine memory: the decoder's refinement layers also attend to the backbone's stage before the last.

What limits DETR's boxes on small objects: every encoder token covers a `backbone_stride`-pixel
cell (16 px in the shapes recipe), so a 10-px object lies inside one token, and the box a query
predicts from such tokens is coarse. With the spatial prior and query selection the first
reference boxes already sit on the objects, so what a refinement layer lacks is finer evidence,
not a better place to look (measured layer by layer: benchmarks/refinement_by_layer.py). Deformable DETR
(Zhu et al. 2021, arXiv 2010.04159, section 4.1) gives its decoder every ResNet stage from stride 8
up, sampled around each reference box.

Our version, a plain-attention form of that idea for one more level:
- the backbone also returns the stage before its last (layer2, at stride 8 when backbone_stride is
  16: twice the resolution, half the channels), projected to D by a 1x1 convolution and a
  GroupNorm (Deformable DETR's input projection), with sine positions over the same normalised
  image and a learned level embedding;
- these tokens are not encoded (4x the tokens, and the encoder's cost is quadratic in them): they
  join the memory of the decoder layers after the first, whose cross-attention the spatial prior
  centres on the box the layer before predicted (the Gaussian bias covers both levels);
- the first decoder layer reads the encoded memory only, as without the option.
What it changes, and the alternatives measured (fine tokens in every layer, a lower weight of
the Gaussian over them): benchmarks/README.md, "Fine memory".
Used through `DETRConfig.fine_memory` (at least two decoder layers; off = the official DETR). It
adds `fine_memory.*` parameters to the state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_full.position_encoding import PositionEmbeddingSine
from detr_full.transformer import Memory


class FineMemory(nn.Module):
    def __init__(self, in_channels: int, d_model: int):
        super().__init__()
        self.input_proj = nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=1),
                                        nn.GroupNorm(min(32, d_model), d_model))
        self.level_embed = nn.Parameter(torch.zeros(d_model))          # tells the two levels apart
        self.position = PositionEmbeddingSine(d_model // 2, normalize=True)

    def forward(self, fine: Tensor, mask: Tensor) -> Memory:
        """fine (B, C', 2h, 2w) the backbone's earlier stage; mask (B, 2h, 2w) True on padding
        -> its (B, L2, .) tokens as a memory level."""
        tokens = self.input_proj(fine).flatten(2).transpose(1, 2)          # (B, L2, D)
        pos = self.position(mask).to(tokens.dtype).flatten(2).transpose(1, 2) + self.level_embed  # (B, L2, D)
        return Memory(tokens, pos, mask.flatten(1))


def layer_levels(memory: Memory, grid: Tensor, fine: Memory, fine_grid: Tensor, num_layers: int
                 ) -> tuple[list[list[Memory]], list[list[Tensor]]]:
    """The encoder's memory (over `grid`, its (B, h, w) padding mask) and the fine level (over
    `fine_grid`, (B, 2h, 2w)) -> what each decoder layer reads: the first the memory alone, the others
    both levels; and the padding masks of the grids each layer's tokens lie on (for the spatial prior)."""
    return [[memory]] + [[memory, fine]] * (num_layers - 1), [[grid]] + [[grid, fine_grid]] * (num_layers - 1)


def on_coarse_cells(values: Tensor, coarse_hw: tuple[int, int], fine_hw: tuple[int, int]) -> Tensor:
    """(..., L + L2) one value per memory token, both levels -> (..., h, w): each fine cell's value
    added to the coarse cell holding it (fine cells 2i, 2i + 1 lie in coarse cell i; the fine grid is
    2h x 2w, or one less where the image's size is odd). For drawing attention over both levels."""
    (h, w), (h2, w2) = coarse_hw, fine_hw
    coarse = values[..., :h * w].unflatten(-1, (h, w))                   # (..., h, w)
    fine = F.pad(values[..., h * w:].unflatten(-1, (h2, w2)), (0, 2 * w - w2, 0, 2 * h - h2))  # (..., 2h, 2w)
    return coarse + fine.unflatten(-1, (w, 2)).unflatten(-3, (h, 2)).sum((-1, -3))
