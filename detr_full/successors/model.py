"""SuccessorDETR: DETR with any of its successors' options, composed in one model.

The options change different parts of one forward pass, and they compose, so one class holds them
(detrex keeps each variant a model of its own; here a variant is a set of options). What each adds:
- the object queries: query groups (group_detr.py) decode K groups of Q queries in training;
  denoising queries (denoising.py) come first in training; anchor queries (anchor_queries.py)
  make the queries' positions from their reference boxes, and the learned rows become content;
- what the decoder reads: fine memory (fine_memory.py) adds the backbone's finer stage to the
  memory of the layers after the first;
- what the decoder refines: reference boxes (reference_boxes.py), the first from the spatial prior
  (spatial_prior.py: learned) or from the encoder's proposals (query_selection.py), with the
  cross-attention biased around them (the spatial prior's Gaussian; the conditional spatial query,
  conditional.py), and every box predicted relative to its reference;
- how classes are scored: a classification rule (classification.py; focal.py), as in DETR.
With every option off the model computes DETR's outputs (tests/test_successors.py pins it on the
golden fixture), and its state-dict keys are DETR's plus one group per option.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from detr_full.backbone import BackboneFeatures, Joiner
from detr_full.classification import ClassificationRule, SoftmaxClassification
from detr_full.config import DETRConfig, check_config
from detr_full.detr import DETR, MLP, checked_padding_mask
from detr_full.successors.anchor_queries import AnchorQueries
from detr_full.successors.conditional import ConditionalSpatialQuery
from detr_full.successors.denoising import Denoising, DenoisingQueries, denoising_attention_mask
from detr_full.successors.fine_memory import FineMemory, layer_levels
from detr_full.successors.group_detr import group_queries
from detr_full.successors.query_selection import Proposals, QuerySelection
from detr_full.successors.reference_boxes import ReferenceBoxes
from detr_full.successors.spatial_prior import SpatialPrior
from detr_full.transformer import Memory, Transformer


class ObjectQueries(NamedTuple):
    """One forward pass's decoder queries: N denoising queries (training only), then the others."""
    count: int                      # the matching queries' rows: Q, or K*Q with query groups in training
    content: Optional[Tensor]       # (B, N + count, D) the decoder's input; None: zeros (DETR)
    position: Optional[Tensor]      # (B, N + count, D) added to every attention's queries; None: from the boxes
    allowed: Optional[Tensor]       # (N + count, N + count) bool, which queries may see which; None: all
    denoising: Optional[DenoisingQueries]


class FinerLevel(NamedTuple):
    """Fine memory's input: the backbone's output with its finer stage kept, and that stage as memory."""
    features: BackboneFeatures
    memory: Memory                  # (B, L2, .)


class SuccessorDETR(DETR):
    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = False, classification: Optional[ClassificationRule] = None, *,
                 num_query_groups: int = 1, spatial_prior: bool = False, denoising: Optional[Denoising] = None,
                 anchor_queries: bool = False, query_selection: bool = False, selection_nms: float = 0.0,
                 fine_memory: bool = False, conditional: bool = False):
        """DETR's arguments, then the options (DETRConfig's fields of the same names; `denoising` is the
        module that makes the denoising queries, None: off). They must satisfy config.check_config."""
        check_config(DETRConfig(num_query_groups=num_query_groups, spatial_prior=spatial_prior,
                                dn_groups=0 if denoising is None else denoising.num_groups,
                                anchor_queries=anchor_queries, query_selection=query_selection,
                                selection_nms=selection_nms, fine_memory=fine_memory, conditional=conditional,
                                dec_layers=len(transformer.decoder.layers)))
        if fine_memory and getattr(backbone[0], "fine_stage", None) is None:
            raise ValueError("fine_memory needs a backbone that keeps its finer stage: build it with keep_fine=True "
                             "(build_detr does this).")
        classification = classification or SoftmaxClassification()
        # the query table holds the K groups' rows (group_detr.py): K*Q in all
        super().__init__(backbone, transformer, num_classes, num_queries * num_query_groups, aux_loss, classification)
        d = transformer.d_model
        self.num_queries, self.num_query_groups = num_queries, num_query_groups
        # the first reference boxes: learned, or none to learn when the encoder proposes them
        self.spatial_prior = SpatialPrior(num_queries * num_query_groups, learned=not query_selection) \
            if spatial_prior else None
        self.denoising = denoising
        self.anchor_queries = AnchorQueries(d) if anchor_queries else None
        self.query_selection = QuerySelection(d, classification, num_classes, num_queries, MLP(d, d, 4, 3),
                                              selection_nms) if query_selection else None
        self.fine_memory = FineMemory(backbone.fine_channels, d) if fine_memory else None
        self.conditional = ConditionalSpatialQuery(d, transformer.nhead) if conditional else None

    @property
    def reads_targets(self) -> bool:
        """Whether training needs the targets in `forward` (to make denoising queries)."""
        return self.denoising is not None

    def forward(self, images: Tensor | BackboneFeatures, padding_mask: Optional[Tensor] = None,
                targets: Optional[list[dict]] = None) -> dict:
        """DETR's forward; `targets` are only read in training with denoising queries, which then add
        `dn_outputs` (denoising.py). Query selection adds the proposals as `enc_outputs`."""
        padding_mask = checked_padding_mask(images, padding_mask)
        fine = self.finer_level(images, padding_mask)                   # fine memory's level, or None
        features, mask, pos = self.backbone(fine.features if fine else images, padding_mask)  # (B, C, h, w), ...
        queries = self.object_queries(len(features), targets)
        memory = self.transformer.encode(self.input_proj(features), mask, pos)   # (B, L, .)
        proposals = None if self.query_selection is None else self.query_selection(memory.tokens, mask)
        levels, grids = self.layer_levels(memory, mask, fine)
        boxes = None if self.spatial_prior is None else self.reference_boxes(queries, proposals, levels, grids)
        hs = self.transformer.decode(levels, queries.position, queries.content, queries.allowed, boxes)
        logits, offsets = self.class_embed(hs), self.bbox_embed(hs)     # (layers, B, N + Q, K), (..., 4)
        pred_boxes = offsets.sigmoid() if boxes is None else boxes.predicted(offsets)
        return self.outputs(logits, pred_boxes, queries.denoising, proposals)

    def object_queries(self, batch: int, targets: Optional[list[dict]]) -> ObjectQueries:
        rows, allowed = self.query_embed.weight, None                   # (Q, D), or (K*Q, D) with groups
        if self.num_query_groups > 1:
            rows, allowed = group_queries(rows, self.num_queries, self.training)
        position, content = rows.expand(batch, -1, -1), None            # (B, Q, D)
        if self.anchor_queries is not None:                             # positions come from the boxes,
            position, content = None, position                          # the learned rows are the content
        dn = self.denoising(targets) if self.denoising is not None and self.training and targets else None
        if dn is not None:                                              # the N denoising queries first
            content = torch.cat([dn.content, rows.new_zeros(batch, *rows.shape) if content is None else content], 1)
            if position is not None:
                position = torch.cat([dn.position, position], 1)        # (B, N + Q, D)
            allowed = denoising_attention_mask(dn.num_groups, dn.group_size, self.num_queries, rows.device)
        return ObjectQueries(len(rows), content, position, allowed, dn)

    def finer_level(self, images: Tensor | BackboneFeatures, padding_mask: Tensor) -> Optional[FinerLevel]:
        """With fine memory: the backbone's output with its finer stage kept, and that stage as a memory level."""
        if self.fine_memory is None:
            return None
        features = images if isinstance(images, BackboneFeatures) else self.backbone[0].run(images, padding_mask)
        if features.fine is None:
            raise ValueError("this model has fine_memory: the BackboneFeatures it is given must hold the fine "
                             "level (a backbone built with keep_fine=True, as build_detr does).")
        return FinerLevel(features, self.fine_memory(features.fine, features.fine_mask))

    def layer_levels(self, memory: Memory, mask: Tensor, fine: Optional[FinerLevel]
                     ) -> tuple[list[list[Memory]], list[list[Tensor]]]:
        """The memory levels each decoder layer reads, and the padding masks (B, h, w) of their grids."""
        layers = len(self.transformer.decoder.layers)
        if fine is None:
            return [[memory]] * layers, [[mask]] * layers
        return layer_levels(memory, mask, fine.memory, fine.features.fine_mask, layers)

    def reference_boxes(self, queries: ObjectQueries, proposals: Optional[Proposals], levels: list[list[Memory]],
                        grids: list[list[Tensor]]) -> ReferenceBoxes:
        """Layer 0's boxes (the denoising queries' noised boxes first) and what the queries are told from them."""
        batch = len(levels[0][0].tokens)
        first = self.spatial_prior.boxes(queries.count).expand(batch, -1, -1) if proposals is None \
            else proposals.reference                                    # (B, Q, 4)
        if queries.denoising is not None:
            first = torch.cat([queries.denoising.boxes, first], 1)      # (B, N + Q, 4)
        priors = [self.spatial_prior.prior(grids)]
        if self.conditional is not None:
            priors.append(self.conditional.prior(levels))
        return ReferenceBoxes(first, self.bbox_embed, priors, position=self.anchor_queries)

    def outputs(self, logits: Tensor, boxes: Tensor, dn: Optional[DenoisingQueries],
                proposals: Optional[Proposals]) -> dict:
        """Every layer's (layers, B, N + Q, .) logits and boxes -> DETR's output dict, plus `dn_outputs` (the
        N denoising queries' readouts, with their targets) and `enc_outputs` (the encoder's proposals)."""
        dn_out = None
        if dn is not None:
            n = dn.labels.shape[1]
            dn_out = {"pred_logits": logits[:, :, :n], "pred_boxes": boxes[:, :, :n],
                      "labels": dn.labels, "boxes": dn.target_boxes, "valid": dn.valid}
            logits, boxes = logits[:, :, n:], boxes[:, :, n:]
        out = self.readouts(logits, boxes)
        if dn_out is not None:
            out["dn_outputs"] = dn_out
        if proposals is not None:                                       # the encoder's (B, L, .) proposals
            out["enc_outputs"] = {"pred_logits": proposals.logits, "pred_boxes": proposals.boxes}
        return out
