"""build_detr: the model, criterion and post-processor that a DETRConfig describes (the official
`build(args)` of models/detr.py).

With every successor option off (the defaults) this is the official DETR (detr.py) with its
SetCriterion and PostProcess. With any of them on, the model is the successors' composed
SuccessorDETR and the criterion SuccessorCriterion (detr_full/successors/). This file and
config.py are the only places that know the options by name: the core modules are given what
an option plugs in (a classification rule, reference boxes, memory levels).
"""

from __future__ import annotations

from detr_full.backbone import build_backbone
from detr_full.classification import ClassificationRule, SoftmaxClassification
from detr_full.config import DETRConfig, check_config, uses_successors
from detr_full.criterion import SetCriterion
from detr_full.detr import DETR
from detr_full.matcher import HungarianMatcher
from detr_full.position_encoding import build_position_encoding
from detr_full.postprocess import PostProcess
from detr_full.successors.criterion import SuccessorCriterion
from detr_full.successors.denoising import Denoising, denoising_weights
from detr_full.successors.focal import SigmoidFocal
from detr_full.successors.model import SuccessorDETR
from detr_full.transformer import Transformer

def classification_rule(cfg: DETRConfig) -> ClassificationRule:
    """DETR's softmax with "no object", or the sigmoid focal rule (successors/focal.py)."""
    return SigmoidFocal(cfg.num_classes, cfg.focal_alpha) if cfg.focal_loss else SoftmaxClassification(cfg.eos_coef)


def loss_weights(cfg: DETRConfig) -> dict[str, float]:
    """The weighted loss terms, with `_i` copies for the auxiliary decoder layers (paper eq. 2), `_enc`
    for the encoder's proposals (query selection) and `loss_dn_*` for denoising queries."""
    weights = {"loss_ce": classification_rule(cfg).loss_weight, "loss_bbox": cfg.bbox_loss_coef,
               "loss_giou": cfg.giou_loss_coef}
    layer = dict(weights)
    if cfg.aux_loss:
        weights.update({f"{k}_{i}": v for i in range(cfg.dec_layers - 1) for k, v in layer.items()})
    if cfg.query_selection:
        weights.update({f"{k}_enc": v for k, v in layer.items()})
    if cfg.dn_groups > 0:
        weights.update(denoising_weights(weights, cfg.dec_layers, cfg.aux_loss))
    return weights


def build_detr(cfg: DETRConfig) -> tuple[DETR, SetCriterion, PostProcess]:
    """The model, its training criterion and the post-processor, as the official build(args)."""
    check_config(cfg)
    classification = classification_rule(cfg)
    backbone = build_backbone(cfg.backbone, build_position_encoding(cfg.position_embedding, cfg.hidden_dim),
                              lr_backbone=cfg.lr_backbone, dilation=cfg.dilation,
                              pretrained=cfg.pretrained_backbone, frozen_bn=cfg.frozen_bn,
                              train_stem=cfg.train_stem, stride=cfg.backbone_stride, keep_fine=cfg.fine_memory)
    transformer = Transformer(d_model=cfg.hidden_dim, nhead=cfg.nheads, num_encoder_layers=cfg.enc_layers,
                              num_decoder_layers=cfg.dec_layers, dim_feedforward=cfg.dim_feedforward,
                              dropout=cfg.dropout, normalize_before=cfg.pre_norm, pos_at_input=cfg.position_at_input)
    matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, classification)
    weights = loss_weights(cfg)
    if not uses_successors(cfg):
        model = DETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss, classification)
        criterion = SetCriterion(cfg.num_classes, matcher, weights, cfg.eos_coef, classification)
        return model, criterion, PostProcess(classification)
    denoising = None
    if cfg.dn_groups > 0:
        denoising = Denoising(cfg.num_classes, cfg.hidden_dim, cfg.dn_groups, cfg.dn_label_noise, cfg.dn_box_noise,
                              box_position=not cfg.anchor_queries)
    model = SuccessorDETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss, classification,
                          num_query_groups=cfg.num_query_groups, spatial_prior=cfg.spatial_prior, denoising=denoising,
                          anchor_queries=cfg.anchor_queries, query_selection=cfg.query_selection,
                          selection_nms=cfg.selection_nms, fine_memory=cfg.fine_memory, conditional=cfg.conditional)
    criterion = SuccessorCriterion(cfg.num_classes, matcher, weights, cfg.eos_coef, classification,
                                   num_queries=cfg.num_queries if cfg.num_query_groups > 1 else None,
                                   proposal_copies=cfg.proposal_copies)
    return model, criterion, PostProcess(classification)
