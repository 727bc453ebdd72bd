"""A ~50-line DETR, as in the official demo notebook (`DETRdemo`), written to run on batches.

Differences from the paper (and from `detr_full`):
- learned row/column position embeddings are added once to the encoder input (scaled features:
  `pos + 0.1 * h`), not to the queries and keys of every attention layer;
- the object queries are the decoder *input*, not a positional term added at every layer;
- the box head is one linear layer, not a 3-layer MLP, and there are no auxiliary outputs;
- the backbone's BatchNorm is ordinary (use it in eval mode), not FrozenBatchNorm2d;
- no padding mask: images in a batch must share one size.
The parameter names are the demo's, so `detr_demo-da2a99e9.pth` loads with strict=True.
"""

import torch
from torch import Tensor, nn
from torchvision.models import resnet50


class DETRMinimal(nn.Module):
    def __init__(self, num_classes: int = 91, hidden_dim: int = 256, nheads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, num_queries: int = 100):
        super().__init__()
        self.backbone = resnet50()                         # random init: weights come from a checkpoint
        del self.backbone.fc
        self.conv = nn.Conv2d(2048, hidden_dim, 1)         # C = 2048 -> D
        self.transformer = nn.Transformer(hidden_dim, nheads, num_encoder_layers, num_decoder_layers,
                                          batch_first=True)
        self.linear_class = nn.Linear(hidden_dim, num_classes + 1)  # +1: "no object"
        self.linear_bbox = nn.Linear(hidden_dim, 4)
        self.query_pos = nn.Parameter(torch.rand(num_queries, hidden_dim))
        self.row_embed = nn.Parameter(torch.rand(50, hidden_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(50, hidden_dim // 2))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) -> pred_logits (B, Q, num_classes + 1), pred_boxes (B, Q, 4) cxcywh in [0, 1]."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))                         # (B, 2048, H/32, W/32)
        h = self.conv(x)                                                      # (B, D, h, w)
        hh, ww = h.shape[-2:]
        pos = torch.cat([self.col_embed[:ww][None].expand(hh, -1, -1),        # (h, w, D/2) x first
                         self.row_embed[:hh][:, None].expand(-1, ww, -1)], -1).flatten(0, 1)  # (h*w, D)
        src = pos[None] + 0.1 * h.flatten(2).transpose(1, 2)                  # (B, h*w, D)
        queries = self.query_pos[None].expand(len(images), -1, -1)           # (B, Q, D)
        hs = self.transformer(src, queries)                                   # (B, Q, D)
        return {"pred_logits": self.linear_class(hs), "pred_boxes": self.linear_bbox(hs).sigmoid()}
