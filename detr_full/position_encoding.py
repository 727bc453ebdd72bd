"""Position encodings for the 2-D feature map (DETR paper, appendix A.4).

The transformer is permutation-invariant, so every attention layer adds a position encoding to its
queries and keys. Both encodings return (B, D, h, w) with D = 2 * num_pos_feats:
- sine: y features first, then x; padding-aware (positions count only valid pixels);
- learned: x (column) features first, then y; ignores padding; feature maps up to 50 x 50.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """The "Attention is all you need" sine encoding, applied to y and x separately.

    With `normalize`, coordinates are rescaled to [0, scale] within each image's valid region, so an
    image's encoding does not depend on how much padding its batch-mates forced on it.
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = False,
                 scale: Optional[float] = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `scale` only applies with normalize=True.")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, h, w) True on padding -> (B, 2 * num_pos_feats, h, w)."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)                  # (B, h, w): 1..h_valid
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)  # channel pairs share a frequency
        pos_x = x_embed[..., None] / dim_t                                  # (B, h, w, F)
        pos_y = y_embed[..., None] / dim_t
        # sin on even channels, cos on odd ones, interleaved: (B, h, w, F/2, 2) -> (B, h, w, F)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)        # (B, 2F, h, w)


class PositionEmbeddingLearned(nn.Module):
    """A learned embedding per row and per column (the one the DETR demo notebook uses)."""

    max_size = 50

    def __init__(self, num_pos_feats: int = 256):
        super().__init__()
        self.row_embed = nn.Embedding(self.max_size, num_pos_feats)
        self.col_embed = nn.Embedding(self.max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, h, w) (only its shape is used) -> (B, 2 * num_pos_feats, h, w)."""
        b, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(f"PositionEmbeddingLearned supports feature maps up to {self.max_size}x"
                             f"{self.max_size}; got {h}x{w} (an image of about {h * 32}x{w * 32} px at "
                             "stride 32). Use position_embedding='sine' or smaller images.")
        x_emb = self.col_embed(torch.arange(w, device=mask.device))       # (w, F)
        y_emb = self.row_embed(torch.arange(h, device=mask.device))       # (h, F)
        pos = torch.cat([x_emb[None, :, :].expand(h, w, -1),
                         y_emb[:, None, :].expand(h, w, -1)], dim=-1)       # (h, w, 2F)
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)            # (B, 2F, h, w)


class PositionEmbeddingNone(nn.Module):
    """No spatial encoding: zeros (B, D, h, w), for the paper's Table 3 ablation (not an official flag value)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, mask: Tensor) -> Tensor:
        return torch.zeros(mask.shape[0], self.dim, *mask.shape[1:], device=mask.device)


def build_position_encoding(kind: str, hidden_dim: int) -> nn.Module:
    """`kind` is the official --position_embedding value; half the channels encode y, half x."""
    n_steps = hidden_dim // 2
    if kind in ("sine", "v2"):
        return PositionEmbeddingSine(n_steps, normalize=True)
    if kind in ("learned", "v3"):
        return PositionEmbeddingLearned(n_steps)
    if kind == "none":
        return PositionEmbeddingNone(hidden_dim)
    raise ValueError(f"position_embedding={kind!r} is not supported; choose 'sine', 'learned' or 'none'.")
