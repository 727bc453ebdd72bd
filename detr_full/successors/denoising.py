"""Denoising queries (DN-DETR: Li et al. 2022, "Accelerate DETR Training by Introducing Query
DeNoising", arXiv 2203.01305).

Why DETR's boxes learn slowly: the Hungarian matching decides which query answers for which
object, and early in training that decision changes from step to step, so a query's box target
jumps between objects and its regression keeps starting over. DN-DETR adds, in training only,
decoder queries made from the ground truth itself: every object's box, jittered, and its label,
sometimes flipped. Their targets need no matching (the true box and label), so the decoder learns
from step 0 to turn a rough box near an object into the object's box: exactly what a matched
query has to do, with a target that never moves.

Our version, on top of the reference boxes (reference_boxes.py; they play DN-DETR's anchor boxes):
- `dn_groups` copies of the batch's objects, each with its own noise: the centre moves by up to
  `dn_box_noise` times half the width / height, width and height are scaled by 1 +- dn_box_noise,
  and the label is replaced by a random class with probability `dn_label_noise`. Every image gets
  as many slots per group as the batch's largest image has objects; the spare slots are padding
  (no loss);
- a denoising query enters the decoder with its noised label's embedding as content, an embedding
  of its noised box as position, and the noised box as its reference (where its Gaussian prior
  looks, and what its box is predicted relative to);
- attention mask: the matching queries never see a denoising query (that would hand them the
  ground truth, which does not exist at inference); a denoising group sees itself and the
  matching queries, never another group;
- loss: cross-entropy to the true label and L1 + GIoU to the true box, per decoder layer, averaged
  over the real slots, weighted like the matched terms (`loss_dn_ce`, `loss_dn_bbox`,
  `loss_dn_giou`, with `_i` for the auxiliary layers).
In eval mode, or without targets, no denoising query is made: the model is spatial-prior DETR.
Used through `DETRConfig.dn_groups` (0 = off, the official DETR); adds `denoising.*` tensors to
the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from detr_full.classification import ClassificationRule
from detr_full.criterion import box_losses
from detr_full.successors.anchor_queries import AnchorQueries

DN_TERMS = ("loss_dn_ce", "loss_dn_bbox", "loss_dn_giou")


def noise_boxes(boxes: Tensor, scale: float) -> Tensor:
    """boxes (..., 4) cxcywh in [0, 1] -> jittered copies: centre moved by up to scale * (w/2, h/2),
    width and height multiplied by a factor in [1 - scale, 1 + scale]; clamped to [0, 1]."""
    r = torch.rand(boxes.shape, device=boxes.device) * 2 - 1                   # (..., 4) in [-1, 1)
    centre = boxes[..., :2] + r[..., :2] * boxes[..., 2:] * scale / 2
    size = boxes[..., 2:] * (1 + r[..., 2:] * scale)
    return torch.cat([centre, size], -1).clamp(0, 1)


def noise_labels(labels: Tensor, num_classes: int, p: float) -> Tensor:
    """labels (...,) -> each replaced by a uniformly random class in [0, num_classes) with probability p."""
    flip = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(flip, torch.randint_like(labels, num_classes), labels)


def denoising_attention_mask(num_groups: int, group_size: int, num_queries: int,
                             device: torch.device | str = "cpu") -> Tensor:
    """(N + Q, N + Q) bool, True where query i may attend to query j, with the N = num_groups *
    group_size denoising queries first: every query sees the Q matching queries; a denoising
    query also sees its own group; a matching query sees no denoising query."""
    n = num_groups * group_size
    group = torch.full((n + num_queries,), -1, device=device)                 # -1: a matching query
    group[:n] = torch.arange(n, device=device) // group_size
    return (group[:, None] == group[None, :]) | (group == -1)[None, :]


@dataclass
class DenoisingQueries:
    """One training batch's denoising queries; N = groups * slots per group."""
    content: Tensor        # (B, N, D) embedding of the noised labels: the decoder's input
    position: Optional[Tensor]  # (B, N, D) embedding of the noised boxes, added at every layer
    boxes: Tensor          # (B, N, 4) noised cxcywh: the queries' reference boxes
    labels: Tensor         # (B, N) the true labels (the targets)
    target_boxes: Tensor   # (B, N, 4) the true boxes
    valid: Tensor          # (B, N) bool, False on padding slots
    num_groups: int

    @property
    def group_size(self) -> int:
        return self.labels.shape[1] // self.num_groups


class Denoising(nn.Module):
    """Makes the denoising queries of a batch (`forward`) from its targets."""

    def __init__(self, num_classes: int, d_model: int, num_groups: int, label_noise: float = 0.2,
                 box_noise: float = 0.4, box_position: bool = True):
        """box_position: embed the noised boxes as the queries' positions (False when the model
        makes every query's position from its reference box itself: anchor_queries.py)."""
        super().__init__()
        self.num_classes, self.num_groups = num_classes, num_groups
        self.label_noise, self.box_noise = label_noise, box_noise
        self.label_embed = nn.Embedding(num_classes, d_model)
        self.box_embed = AnchorQueries(d_model) if box_position else None

    def forward(self, targets: list[dict]) -> DenoisingQueries:
        device = self.label_embed.weight.device
        slots = max(1, max(len(t["labels"]) for t in targets))                 # per group and image
        b = len(targets)
        labels = torch.zeros(b, slots, dtype=torch.int64, device=device)
        boxes = torch.full((b, slots, 4), 0.5, device=device)                  # padding: a centred box
        valid = torch.zeros(b, slots, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            k = len(t["labels"])
            labels[i, :k], boxes[i, :k], valid[i, :k] = t["labels"], t["boxes"], True
        labels, boxes, valid = (x.repeat(1, self.num_groups, *[1] * (x.dim() - 2)) for x in (labels, boxes, valid))
        noised_boxes = noise_boxes(boxes, self.box_noise)                      # (B, N, 4)
        noised_labels = noise_labels(labels, self.num_classes, self.label_noise)  # (B, N)
        position = None if self.box_embed is None else self.box_embed(noised_boxes)
        return DenoisingQueries(self.label_embed(noised_labels), position, noised_boxes, labels, boxes, valid,
                                self.num_groups)


def denoising_weights(weights: dict[str, float], dec_layers: int, aux_loss: bool) -> dict[str, float]:
    """The weights of the denoising terms: those of loss_ce, loss_bbox and loss_giou, per layer."""
    base = dict(zip(DN_TERMS, (weights["loss_ce"], weights["loss_bbox"], weights["loss_giou"])))
    extra = dict(base)
    if aux_loss:
        extra.update({f"{k}_{i}": v for i in range(dec_layers - 1) for k, v in base.items()})
    return extra


def denoising_losses(dn: dict, classification: ClassificationRule, weight_dict: dict[str, float]) -> dict[str, Tensor]:
    """The denoising terms of a model's `dn_outputs` (every layer's pred_logits (layers, B, N, K) and
    pred_boxes (layers, B, N, 4), the true `labels` (B, N) and `boxes` (B, N, 4), `valid` (B, N)):
    the class loss to the true label and L1 + GIoU to the true box, averaged over the real slots,
    `_i` for the earlier layers (those `weight_dict` weighs)."""
    valid = dn["valid"]                                                          # (B, N)
    count = valid.sum().clamp(min=1)
    labels, boxes = dn["labels"][valid], dn["boxes"][valid]                      # (M,), (M, 4)
    layers = len(dn["pred_logits"])
    losses = {}
    for layer, (logits, pred_boxes) in enumerate(zip(dn["pred_logits"], dn["pred_boxes"])):
        # no slot's target is "no object": the rule's loss, unweighted, over the real slots
        dn_ce = classification.loss(logits[valid][None], labels[None], count, None) if len(labels) \
            else logits.sum() * 0
        terms = {"loss_dn_ce": dn_ce}
        terms["loss_dn_bbox"], terms["loss_dn_giou"] = box_losses(pred_boxes[valid], boxes, count)
        suffix = "" if layer == layers - 1 else f"_{layer}"
        losses.update({f"{k}{suffix}": v for k, v in terms.items() if f"{k}{suffix}" in weight_dict})
    return losses
