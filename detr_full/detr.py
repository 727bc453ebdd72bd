"""DETR: backbone -> transformer -> a class and a box prediction per query (paper section 3.2).

Dimension key: B batch, Q queries, T target boxes, C backbone channels, D hidden, h w feature map,
L = h*w, K = num_classes + 1 (the last logit is "no object").

Differences from the official `models/detr.py`: no NestedTensor (`forward(images, padding_mask)`),
the criterion and post-processing live in their own files, the model is built by
`detr_full.build.build_detr` from a `DETRConfig` instead of the argparse namespace, and how the
class logits are scored is an object the model is given (classification.py; DETR's softmax by
default). Parameter names are the official ones. DETR's successors' ideas build on this class in
their own wing (detr_full/successors/); this file is the paper's model only.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_full.backbone import BackboneFeatures, Joiner
from detr_full.classification import ClassificationRule, SoftmaxClassification
from detr_full.transformer import Transformer


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU in between (the box head: 3 layers, D -> D -> D -> 4)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def checked_padding_mask(images: Tensor | BackboneFeatures, padding_mask: Optional[Tensor]) -> Optional[Tensor]:
    """The padding mask DETR runs with: `padding_mask` (B, H, W) bool, True on padding, checked
    against images (B, 3, H, W); all False when None. Images the backbone has already seen
    (BackboneFeatures, made by the loader) carry their own mask."""
    if isinstance(images, BackboneFeatures):
        return padding_mask
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"DETR expects images of shape (B, 3, H, W); got {tuple(images.shape)}. "
                         "Batch a list of images with detr_full.data.collate.pad_images.")
    expected = (images.shape[0], *images.shape[2:])
    if padding_mask is None:
        return torch.zeros(expected, dtype=torch.bool, device=images.device)
    if padding_mask.shape != expected or padding_mask.dtype != torch.bool:
        raise ValueError(f"padding_mask must be bool of shape (B, H, W) = {expected}, True on padding; "
                         f"got {padding_mask.dtype} {tuple(padding_mask.shape)}.")
    return padding_mask


class DETR(nn.Module):
    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = False, classification: Optional[ClassificationRule] = None):
        """backbone: ResNet + position encoding (backbone.py); num_queries: Q, the detection slots;
        aux_loss: also return every earlier decoder layer's readout (paper section 3.2);
        classification: how the class logits are scored (None: DETR's softmax with "no object")."""
        super().__init__()
        classification = classification or SoftmaxClassification()
        d = transformer.d_model
        self.num_queries, self.num_classes, self.aux_loss = num_queries, num_classes, aux_loss
        self.transformer = transformer
        self.class_embed = nn.Linear(d, classification.num_logits(num_classes))  # K: num_classes + "no object"
        classification.init_head(self.class_embed)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(num_queries, d)                 # the object queries
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.backbone = backbone

    def forward(self, images: Tensor | BackboneFeatures, padding_mask: Optional[Tensor] = None) -> dict:
        """images (B, 3, H, W); padding_mask (B, H, W), True on padding (None: no padding). `images` may
        also be the frozen ResNet's output, computed by the loader (`backbone_in_loader`).
        Returns pred_logits (B, Q, K) and pred_boxes (B, Q, 4) as cxcywh in [0, 1], plus
        aux_outputs (one such dict per earlier decoder layer) when aux_loss, and decoder_layers: every
        layer's, stacked (layers, B, Q, .)."""
        return self.readouts(*self.decode(images, checked_padding_mask(images, padding_mask)))

    def decode(self, images: Tensor | BackboneFeatures, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> every decoder layer's class logits (layers, B, Q, K) and boxes (layers, B, Q, 4)."""
        features, mask, pos = self.backbone(images, padding_mask)       # (B, C, h, w), (B, h, w), (B, D, h, w)
        hs = self.transformer(self.input_proj(features), mask, self.query_embed.weight, pos)[0]  # (layers, B, Q, D)
        logits = self.class_embed(hs)                                   # (layers, B, Q, K)
        boxes = self.bbox_embed(hs).sigmoid()                           # (layers, B, Q, 4)
        return logits, boxes

    def readouts(self, logits: Tensor, boxes: Tensor) -> dict:
        """Every decoder layer's (layers, B, Q, .) logits and boxes -> the output dict: the last layer's
        pred_logits and pred_boxes, the others' as aux_outputs (with aux_loss), and all of them stacked
        as decoder_layers (what the criterion matches in one call)."""
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        out["decoder_layers"] = {"pred_logits": logits, "pred_boxes": boxes}
        return out
