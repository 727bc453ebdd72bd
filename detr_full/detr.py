"""DETR: backbone -> transformer -> a class and a box prediction per query (paper section 3.2).

Dimension key: B batch, Q queries, T target boxes, C backbone channels, D hidden, h w feature map,
L = h*w, K = num_classes + 1 (the last logit is "no object").

Differences from the official `models/detr.py`: no NestedTensor (`forward(images, padding_mask)`),
the criterion and post-processing live in their own files, and `build_detr` takes a `DETRConfig`
instead of the argparse namespace. Parameter names are the official ones.
Opt-in hooks for DETR's successors, off by default (then the model is the official one):
`num_query_groups` (Group DETR, group_detr.py), `focal_loss` (focal.py), `spatial_prior`
(spatial_prior.py) and, on top of it, `anchor_queries` (anchor_queries.py), `dn_groups`
(denoising queries, denoising.py), `query_selection` (query_selection.py) and `fine_memory`
(fine_memory.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_full.anchor_queries import AnchorQueries
from detr_full.backbone import BackboneFeatures, build_backbone
from detr_full.config import DETRConfig
from detr_full.criterion import SetCriterion
from detr_full.denoising import Denoising, DenoisingCriterion, denoising_attention_mask, denoising_weights
from detr_full.fine_memory import FineMemory
from detr_full.focal import SigmoidFocal, init_class_bias
from detr_full.group_detr import GroupSetCriterion, group_queries
from detr_full.matcher import HungarianMatcher
from detr_full.position_encoding import build_position_encoding
from detr_full.postprocess import PostProcess
from detr_full.query_selection import QuerySelection
from detr_full.spatial_prior import SpatialPrior, inverse_sigmoid
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


class DETR(nn.Module):
    def __init__(self, backbone: nn.Module, transformer: Transformer, num_classes: int,
                 num_queries: int, aux_loss: bool = False, num_query_groups: int = 1, spatial_prior: bool = False,
                 denoising: Optional[Denoising] = None, anchor_queries: bool = False, focal: bool = False,
                 query_selection: bool = False, selection_nms: float = 0.0, fine_memory: bool = False):
        super().__init__()
        if (anchor_queries or denoising is not None or query_selection) and not spatial_prior:
            raise ValueError("anchor queries (anchor_queries), denoising queries (dn_groups > 0) and query selection "
                             "need spatial_prior=True: its reference boxes are their anchors. Got spatial_prior=False, "
                             f"anchor_queries={anchor_queries}, denoising={denoising is not None}, "
                             f"query_selection={query_selection}.")
        if query_selection and num_query_groups > 1:
            raise ValueError("query_selection gives one set of queries per image; it needs num_query_groups=1, "
                             f"got {num_query_groups}.")
        if fine_memory and (len(transformer.decoder.layers) < 2 or getattr(backbone[0], "fine_stage", None) is None):
            raise ValueError("fine_memory adds a finer level to the decoder layers after the first: it needs at least "
                             f"2 decoder layers (got {len(transformer.decoder.layers)}) and a backbone built with "
                             "keep_fine=True (build_detr does this).")
        d = transformer.d_model
        self.num_queries, self.num_classes, self.aux_loss = num_queries, num_classes, aux_loss
        self.num_query_groups = num_query_groups                        # > 1: Group DETR training (group_detr.py)
        self.transformer = transformer
        self.class_embed = nn.Linear(d, num_classes + (0 if focal else 1))  # +1: "no object" (not with focal.py)
        if focal:
            init_class_bias(self.class_embed)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(num_queries * num_query_groups, d)  # the object queries
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.backbone = backbone
        # a reference box per query and a Gaussian cross-attention prior around it (spatial_prior.py)
        self.spatial_prior = SpatialPrior(num_queries * num_query_groups, learned=not query_selection) \
            if spatial_prior else None
        self.denoising = denoising                                      # training-only queries (denoising.py)
        # query positions made from the reference boxes at every layer (anchor_queries.py)
        self.anchor_queries = AnchorQueries(d) if anchor_queries else None
        # the first reference boxes proposed by the encoder's tokens, per image (query_selection.py)
        self.query_selection = QuerySelection(d, num_classes + (0 if focal else 1), num_queries, MLP(d, d, 4, 3),
                                              focal, selection_nms) if query_selection else None
        if focal and query_selection:
            init_class_bias(self.query_selection.class_embed)
        # the backbone's stage before the last, for the decoder layers after the first (fine_memory.py)
        self.fine_memory = FineMemory(backbone.num_channels // 2, d) if fine_memory else None

    def forward(self, images: Tensor | BackboneFeatures, padding_mask: Optional[Tensor] = None,
                targets: Optional[list[dict]] = None) -> dict:
        """images (B, 3, H, W); padding_mask (B, H, W), True on padding (None: no padding). `images` may
        also be the frozen ResNet's output, computed by the loader (`backbone_in_loader`).
        Returns pred_logits (B, Q, K) and pred_boxes (B, Q, 4) as cxcywh in [0, 1], plus
        aux_outputs (one such dict per earlier decoder layer) when aux_loss. `targets` are only
        read in training with denoising queries, which then add `dn_outputs` (denoising.py)."""
        if not isinstance(images, BackboneFeatures):                    # else the loader ran the ResNet
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"DETR expects images of shape (B, 3, H, W); got {tuple(images.shape)}. "
                                 "Batch a list of images with detr_full.data.collate.pad_images.")
            if padding_mask is None:
                padding_mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool,
                                           device=images.device)
            elif padding_mask.shape != (images.shape[0], *images.shape[2:]) or padding_mask.dtype != torch.bool:
                expected = (images.shape[0], *images.shape[2:])
                raise ValueError(f"padding_mask must be bool of shape (B, H, W) = {expected}, True on padding; "
                                 f"got {padding_mask.dtype} {tuple(padding_mask.shape)}.")
            if self.fine_memory is not None:                            # keep the stage before the last
                images = self.backbone[0].run(images, padding_mask)
        fine = None
        if self.fine_memory is not None:
            if images.fine is None:
                raise ValueError("this model has fine_memory: the BackboneFeatures it is given must hold the fine "
                                 "level (a backbone built with keep_fine=True, as build_detr does).")
            fine = self.fine_memory(images.fine, images.fine_mask)      # (B, L2, D) tokens
        features, mask, pos = self.backbone(images, padding_mask)       # (B, C, h, w), (B, h, w), (B, D, h, w)
        batch = len(features)
        queries, query_allowed = self.query_embed.weight, None          # (Q, D)
        if self.num_query_groups > 1:
            queries, query_allowed = group_queries(queries, self.num_queries, self.training)  # (K*Q or Q, D)
        position, content = queries.expand(batch, -1, -1), None       # (B, Q, D); content None: zeros
        if self.anchor_queries is not None:                             # positions come from the boxes,
            position, content = None, position                          # the learned rows are the content
        dn = self.denoising(targets) if self.denoising is not None and self.training and targets else None
        num_dn = 0
        if dn is not None:                                              # N denoising queries, then the Q others
            num_dn = dn.labels.shape[1]
            content = torch.cat([dn.content, queries.new_zeros(batch, *queries.shape)
                                 if content is None else content], 1)   # (B, N+Q, D)
            if position is not None:
                position = torch.cat([dn.position, position], 1)        # (B, N+Q, D)
            query_allowed = denoising_attention_mask(dn.num_groups, dn.group_size, self.num_queries, features.device)
        memory, flat_mask, flat_pos = self.transformer.encode(self.input_proj(features), mask, pos)  # (B, L, D)
        proposals = self.query_selection(memory, mask) if self.query_selection is not None else None
        memory_bias, refine = None, None
        if self.spatial_prior is not None:
            prior = self.spatial_prior.decoding(self.bbox_embed, len(queries), mask,
                                                dn.boxes if dn is not None else None, self.anchor_queries,
                                                proposals.reference if proposals is not None else None,
                                                fine_mask=None if fine is None else images.fine_mask)
            memory_bias, refine = prior.hooks()
            if self.anchor_queries is not None:
                position = prior.query_position()                       # (B, N+Q, D)
        hs = self.transformer.decode(memory, flat_mask, flat_pos, position, query_allowed, memory_bias,
                                     refine, content, fine)             # (layers, B, Q, D)
        logits = self.class_embed(hs)                                   # (layers, B, Q, K)
        box_logits = self.bbox_embed(hs)                                # (layers, B, Q, 4)
        if self.spatial_prior is not None:                              # boxes relative to each layer's reference
            box_logits = box_logits + inverse_sigmoid(prior.stacked_references())
        boxes = box_logits.sigmoid()                                    # (layers, B, Q, 4)
        if dn is not None:
            dn_out = {"pred_logits": logits[:, :, :num_dn], "pred_boxes": boxes[:, :, :num_dn],
                      "labels": dn.labels, "boxes": dn.target_boxes, "valid": dn.valid}
            logits, boxes = logits[:, :, num_dn:], boxes[:, :, num_dn:]
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if dn is not None:
            out["dn_outputs"] = dn_out
        if proposals is not None:                                       # the encoder's (B, L, .) proposals
            out["enc_outputs"] = {"pred_logits": proposals.logits, "pred_boxes": proposals.boxes}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


def loss_weights(cfg: DETRConfig) -> dict[str, float]:
    """The weighted loss terms, with `_i` copies for the auxiliary decoder layers (paper eq. 2)."""
    # with sigmoid focal classification, Deformable DETR's class weight 2 (focal.py)
    weights = {"loss_ce": 2.0 if cfg.focal_loss else 1.0, "loss_bbox": cfg.bbox_loss_coef,
               "loss_giou": cfg.giou_loss_coef}
    layer = dict(weights)
    if cfg.aux_loss:
        weights.update({f"{k}_{i}": v for i in range(cfg.dec_layers - 1) for k, v in layer.items()})
    if cfg.query_selection:                                             # the encoder's proposals
        weights.update({f"{k}_enc": v for k, v in layer.items()})
    return weights


def build_detr(cfg: DETRConfig) -> tuple[DETR, SetCriterion, PostProcess]:
    """The model, its training criterion and the post-processor, as the official build(args)."""
    backbone = build_backbone(cfg.backbone, build_position_encoding(cfg.position_embedding, cfg.hidden_dim),
                              lr_backbone=cfg.lr_backbone, dilation=cfg.dilation,
                              pretrained=cfg.pretrained_backbone, frozen_bn=cfg.frozen_bn,
                              train_stem=cfg.train_stem, stride=cfg.backbone_stride, keep_fine=cfg.fine_memory)
    transformer = Transformer(d_model=cfg.hidden_dim, nhead=cfg.nheads, num_encoder_layers=cfg.enc_layers,
                              num_decoder_layers=cfg.dec_layers, dim_feedforward=cfg.dim_feedforward,
                              dropout=cfg.dropout, normalize_before=cfg.pre_norm, pos_at_input=cfg.position_at_input)
    denoising = None
    if cfg.dn_groups > 0:
        if cfg.num_query_groups > 1:
            raise ValueError(f"dn_groups > 0 needs num_query_groups=1; got num_query_groups={cfg.num_query_groups}.")
        denoising = Denoising(cfg.num_classes, cfg.hidden_dim, cfg.dn_groups, cfg.dn_label_noise, cfg.dn_box_noise,
                              box_position=not cfg.anchor_queries)
    model = DETR(backbone, transformer, cfg.num_classes, cfg.num_queries, aux_loss=cfg.aux_loss,
                 num_query_groups=cfg.num_query_groups, spatial_prior=cfg.spatial_prior, denoising=denoising,
                 anchor_queries=cfg.anchor_queries, focal=cfg.focal_loss, query_selection=cfg.query_selection,
                 selection_nms=cfg.selection_nms, fine_memory=cfg.fine_memory)
    focal = SigmoidFocal(cfg.num_classes, cfg.focal_alpha) if cfg.focal_loss else None
    matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, focal=focal)
    weights = loss_weights(cfg)
    if denoising is not None:
        criterion = DenoisingCriterion(cfg.num_classes, matcher, {**weights, **denoising_weights(
            weights, cfg.dec_layers, cfg.aux_loss)}, eos_coef=cfg.eos_coef, focal=focal)
    elif cfg.num_query_groups > 1:
        criterion = GroupSetCriterion(cfg.num_classes, matcher, weights, eos_coef=cfg.eos_coef,
                                      num_queries=cfg.num_queries, focal=focal)
    else:
        criterion = SetCriterion(cfg.num_classes, matcher, weights, eos_coef=cfg.eos_coef, focal=focal)
    return model, criterion, PostProcess(focal=cfg.focal_loss)
