"""The Hungarian matcher: a one-to-one assignment of predictions to ground-truth boxes (paper eq. 1).

Dimension key: L decoder layers, B batch, Q queries, K classes (incl. no-object), T targets per
image (T_max: the batch's largest T).

The cost of every query against its own image's targets is computed in one batched call, for one
readout (`forward`, the official interface) or for every decoder layer at once (`match_layers`,
what the criterion uses); it crosses to the host in a single transfer, scipy solves one assignment
per image and layer, and the indices of every layer come back in a single transfer.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from detr_full.box_ops import box_cxcywh_to_xyxy, giou_broadcast
from detr_full.classification import ClassificationRule, SoftmaxClassification
from detr_full.targets import check_targets


class NonFiniteCostError(ValueError):
    """The matching cost is NaN or infinite: the model's outputs are not finite."""


class PaddedTargets(NamedTuple):
    """A batch's targets as padded tensors: image b's T_b targets first, then padding."""
    labels: Tensor   # (B, T_max) int64, 0 on padding
    boxes: Tensor    # (B, T_max, 4) cxcywh, a valid box (0.5, 0.5, 0.5, 0.5) on padding
    sizes: list[int]  # T_b per image, known on the host

    @classmethod
    def of(cls, targets: list[dict]) -> PaddedTargets:
        sizes = [len(t["labels"]) for t in targets]                # tensor lengths: no read from the device
        labels = pad_sequence([t["labels"] for t in targets], batch_first=True)                  # (B, T_max)
        boxes = pad_sequence([t["boxes"] for t in targets], batch_first=True, padding_value=0.5)  # (B, T_max, 4)
        return cls(labels, boxes, sizes)


class Matching(NamedTuple):
    """The assignments of L readouts (decoder layers) as flat indices on the device: pair n gives query
    `query_idx[n]` of image `batch_idx[n]` in layer `layer_idx[n]` that image's target `target_idx[n]`;
    layers, then images, in order, queries ascending. `sizes[l]` pairs belong to layer l."""
    layer_idx: Tensor   # (N,) int64
    batch_idx: Tensor   # (N,) int64
    query_idx: Tensor   # (N,) int64
    target_idx: Tensor  # (N,) int64
    sizes: list[int]    # known on the host

    def layer(self, i: int) -> Matching:
        """Layer i's pairs alone (as a one-layer Matching, its layer index 0)."""
        start = sum(self.sizes[:i])
        part = slice(start, start + self.sizes[i])
        return Matching(torch.zeros_like(self.layer_idx[part]), self.batch_idx[part], self.query_idx[part],
                        self.target_idx[part], [self.sizes[i]])

    def per_image(self, num_images: int) -> list[tuple[Tensor, Tensor]]:
        """A one-layer Matching in the official format: `num_images` pairs (query_idx, target_idx), int64
        on the CPU, of min(Q, T_b) each for the Hungarian matching (more with one_to_many.py's)."""
        counts = torch.bincount(self.batch_idx.cpu(), minlength=num_images).tolist()
        return list(zip(self.query_idx.cpu().split(counts), self.target_idx.cpu().split(counts)))

    @classmethod
    def of(cls, indices: list[tuple[Tensor, Tensor]], device: torch.device) -> Matching:
        """The official format (B pairs (query_idx, target_idx)) -> a one-layer Matching on `device`."""
        batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query, target = torch.cat([q for q, _ in indices]), torch.cat([j for _, j in indices])
        return cls(torch.zeros_like(batch).to(device), batch.to(device), query.to(device), target.to(device),
                   [len(batch)])


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1,
                 classification: Optional[ClassificationRule] = None):
        """Weights of the three costs (official main.py uses 1, 5, 2); `classification` gives the class
        cost (classification.py; None: DETR's softmax rule, whose cost is -p)."""
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all three costs are 0, so every matching is equally good.")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.classification = classification or SoftmaxClassification()

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict] | PaddedTargets) -> Tensor:
        """The matching cost (..., B, Q, T_max) of pred_logits (..., B, Q, K) and pred_boxes (..., B, Q, 4)
        cxcywh (leading dimensions: e.g. the decoder layers): entry [b, q, t] is the cost of giving query
        q of image b the target t of the same image; columns past image b's own T_b are padding.

        The official matcher scores every query against every target of the whole batch and then
        keeps the diagonal blocks; scoring each image against its own targets only is B times less
        work and gives the same blocks.
        """
        padded = targets if isinstance(targets, PaddedTargets) else PaddedTargets.of(targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]    # (..., B, Q, K), (..., B, Q, 4)
        lead = logits.shape[:-3]
        flat_logits, flat_boxes = logits.flatten(0, -4) if lead else logits[None], \
            boxes.flatten(0, -4) if lead else boxes[None]                  # (N, B, Q, .)
        ids = padded.labels[None].expand(len(flat_logits), -1, -1)           # (N, B, T_max)
        tgt = padded.boxes[None].expand(len(flat_boxes), -1, -1, -1)        # (N, B, T_max, 4)
        cost_class = self.classification.cost(flat_logits.flatten(0, 1), ids.flatten(0, 1))  # (N*B, Q, T_max)
        cost_bbox = torch.cdist(flat_boxes.flatten(0, 1), tgt.flatten(0, 1), p=1)             # (N*B, Q, T_max)
        # target boxes are checked before (targets.py): by the criterion, or in training by the data pipeline
        pred_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(flat_boxes.flatten(0, 1)), box_cxcywh_to_xyxy(tgt.flatten(0, 1))
        cost_giou = -giou_broadcast(pred_xyxy[:, :, None, :], tgt_xyxy[:, None, :, :])       # (N*B, Q, T_max)
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(*lead, *logits.shape[-3:-1], -1)                # (..., B, Q, T_max)

    @torch.no_grad()
    def match_layers(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict] | PaddedTargets) -> Matching:
        """pred_logits (L, B, Q, K) and pred_boxes (L, B, Q, 4) cxcywh, every decoder layer's readout ->
        their Matching (on the readouts' device): one cost, one transfer to the host, one back."""
        padded = targets if isinstance(targets, PaddedTargets) else PaddedTargets.of(targets)
        num_layers, device = len(pred_logits), pred_logits.device
        if sum(padded.sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64, device=device)
            return Matching(empty, empty, empty, empty, [0] * num_layers)
        cost = self.cost_matrix({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, padded)   # (L, B, Q, T_max)
        cost = cost.to("cpu", non_blocking=False).numpy()                  # the one transfer to the host
        if not np.isfinite(cost).all():                                    # checked on the host, where it is free
            raise NonFiniteCostError("the matching cost is not finite: the predicted logits or boxes hold NaN or "
                                     "inf values.")
        rows, sizes = [], []
        for layer in range(num_layers):
            size = 0
            for b, num_targets in enumerate(padded.sizes):
                if num_targets == 0:
                    continue
                queries, targets_b = linear_sum_assignment(cost[layer, b, :, :num_targets])
                rows.append(np.stack([np.full(len(queries), layer), np.full(len(queries), b), queries, targets_b]))
                size += len(queries)
            sizes.append(size)
        flat = torch.from_numpy(np.concatenate(rows, 1).astype(np.int64))  # (4, N)
        if device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(device, non_blocking=True)                          # the one transfer back
        return Matching(*flat, sizes)

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) cxcywh; targets: B dicts with labels (T_b,)
        and boxes (T_b, 4) cxcywh. Returns B pairs (query_idx, target_idx), int64, len min(Q, T_b),
        query indices ascending."""
        check_targets(targets)                  # values read on the host: this interface returns CPU indices anyway
        padded = PaddedTargets.of(targets)
        matching = self.match_layers(outputs["pred_logits"][None], outputs["pred_boxes"][None], padded)
        return matching.per_image(len(targets))
