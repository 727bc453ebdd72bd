"""Checkers for the exercises of notebooks/06_set_prediction_losses.ipynb.

Each checker calls the learner's function on small seeded cases, compares it with `detr_full`
(box_ops and SetCriterion), prints "OK: ..." or "not yet: <hint>", and returns True or False.
A wrong answer never raises: the learner's exceptions are caught and reported as hints.

Dimension key: B batch, Q queries, K = num_classes + 1, N and M boxes.

    check_giou(fn)         fn(boxes1 (N, 4), boxes2 (M, 4), both xyxy) -> (N, M) pairwise GIoU
    check_loss_labels(fn)  fn(pred_logits, targets, indices, num_classes, eos_coef) -> loss_ce
    check_box_losses(fn)   fn(pred_boxes, targets, indices, num_boxes) -> (loss_bbox, loss_giou)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_full.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from detr_full.criterion import SetCriterion
from detr_full.matcher import HungarianMatcher
from detr_full.exercises.checking import call, verdict, close


def check_giou(fn: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Check `fn(boxes1, boxes2) -> (N, M)`, the pairwise generalised IoU (Rezatofighi et al. 2019).

    boxes1 (N, 4) and boxes2 (M, 4) are xyxy in the same units; entry [i, j] is
    IoU(i, j) - (area(C) - area(union)) / area(C), with C the smallest box enclosing both.
    Compared with `detr_full.box_ops.generalized_box_iou` (which equals
    `torchvision.ops.generalized_box_iou`). Prints OK or a hint; returns True when it passes.
    """
    g = torch.Generator().manual_seed(0)
    top_left = torch.rand(5, 2, generator=g) * 10
    random_boxes = torch.cat([top_left, top_left + 1 + torch.rand(5, 2, generator=g) * 6], dim=1)  # (5, 4)
    cases = [
        ("identical boxes", torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 2.]])),
        ("overlapping boxes", torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 1., 3., 3.]])),
        ("disjoint boxes", torch.tensor([[0., 0., 1., 1.]]), torch.tensor([[2., 2., 3., 3.]])),
        ("one box inside another", torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[1., 1., 2., 2.]])),
        ("3 x 5 random boxes", random_boxes[:3], random_boxes),
    ]
    for name, boxes1, boxes2 in cases:
        want = generalized_box_iou(boxes1, boxes2)                          # (N, M)
        got, error = call(fn, boxes1, boxes2)
        if error:
            return verdict(False, error)
        if not isinstance(got, Tensor):
            return verdict(False, f"return a Tensor of shape (N, M), got {type(got).__name__}.")
        if got.shape != want.shape:
            if got.shape == want.shape[::-1] and len(boxes1) != len(boxes2):
                return verdict(False, f"[{name}] the result is transposed: entry [i, j] pairs boxes1[i] with boxes2[j].")
            return verdict(False, f"[{name}] the result should be pairwise, (N, M) = {tuple(want.shape)}; got "
                                   f"{tuple(got.shape)}. Broadcast boxes1[:, None, :] against boxes2[None, :, :].")
        if close(got, want):
            continue
        iou = box_iou(boxes1, boxes2)[0]
        if close(got, iou):
            return verdict(False, f"[{name}] that is the plain IoU; subtract the part of the enclosing box "
                                   "C that the union does not cover: (area(C) - union) / area(C).")
        if name == "disjoint boxes":
            return verdict(False, f"[{name}] GIoU should be {want.item():.4f} < 0. Clamp the intersection's "
                                   "width and height at 0 (disjoint boxes do not overlap negatively).")
        return verdict(False, f"[{name}] expected {want.flatten()[:3].tolist()}..., got "
                               f"{got.flatten()[:3].tolist()}...; check the union "
                               "(area1 + area2 - intersection) and the enclosing box (min of the top-left "
                               "corners, max of the bottom-right corners).")
    return verdict(True, "your GIoU matches detr_full.box_ops.generalized_box_iou (and torchvision's).")


def _loss_case(num_classes: int = 5, seed: int = 0):
    """A batch of 3 images with 2, 0 and 3 targets; 6 queries; its Hungarian matching."""
    g = torch.Generator().manual_seed(seed)
    sizes = [2, 0, 3]
    centres = 0.25 + 0.5 * torch.rand(3, 6, 2, generator=g)
    outputs = {"pred_logits": torch.randn(3, 6, num_classes + 1, generator=g) * 2,
               "pred_boxes": torch.cat([centres, 0.1 + 0.3 * torch.rand(3, 6, 2, generator=g)], dim=-1)}
    targets = []
    for t in sizes:
        centre = 0.25 + 0.5 * torch.rand(t, 2, generator=g)
        targets.append({"labels": torch.randint(0, num_classes, (t,), generator=g),
                        "boxes": torch.cat([centre, 0.1 + 0.3 * torch.rand(t, 2, generator=g)], dim=1)})
    indices = HungarianMatcher(1, 5, 2)(outputs, targets)
    return outputs, targets, indices


def check_loss_labels(fn: Callable[..., Tensor]) -> bool:
    """Check `fn(pred_logits, targets, indices, num_classes, eos_coef) -> loss_ce` (a scalar).

    pred_logits (B, Q, K) with K = num_classes + 1; targets: B dicts with labels (T_b,); indices: the
    matcher's B pairs (query_idx, target_idx). Unmatched queries are labelled "no object"
    (num_classes), whose class weight is eos_coef; the loss is the weighted mean cross-entropy,
    as `SetCriterion`'s loss_ce. Prints OK or a hint; returns True when it passes.
    """
    num_classes = 5
    outputs, targets, indices = _loss_case(num_classes)
    logits = outputs["pred_logits"]
    for eos_coef in (0.1, 1.0):
        criterion = SetCriterion(num_classes, HungarianMatcher(1, 5, 2), {}, eos_coef=eos_coef)
        want = criterion.layer_losses(outputs, targets, indices, 5.0, with_class_error=False)["loss_ce"]
        got, error = call(fn, logits, targets, indices, num_classes, eos_coef)
        if error:
            return verdict(False, error)
        if not isinstance(got, Tensor) or got.numel() != 1:
            return verdict(False, "return the loss as a scalar Tensor.")
        if close(got.reshape(()), want):
            continue
        target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64)
        for b, (q, t) in enumerate(indices):
            target_classes[b, q] = targets[b]["labels"][t]
        per_query = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")   # (B, Q)
        weights = criterion.empty_weight[target_classes]                                       # (B, Q)
        if close(got.reshape(()), per_query.mean()):
            return verdict(False, f"[eos_coef={eos_coef}] give the no-object class the weight eos_coef: "
                                   "F.cross_entropy(..., weight=w) with w = ones(K) and w[-1] = eos_coef.")
        if close(got.reshape(()), (per_query * weights).mean()):
            return verdict(False, f"[eos_coef={eos_coef}] a weighted cross-entropy divides by the sum of the "
                                   "weights, not by B * Q (F.cross_entropy with weight= does that).")
        return verdict(False, f"[eos_coef={eos_coef}] expected {want.item():.4f}, got {got.item():.4f}. Every "
                               "query gets the class num_classes (no object) except the matched ones, which "
                               "get their target's label; cross_entropy takes (B, K, Q) logits, so transpose.")
    return verdict(True, "your loss_ce matches SetCriterion (no-object weight eos_coef, weighted mean).")


def check_box_losses(fn: Callable[..., tuple[Tensor, Tensor]]) -> bool:
    """Check `fn(pred_boxes, targets, indices, num_boxes) -> (loss_bbox, loss_giou)`.

    pred_boxes (B, Q, 4) and the targets' boxes are normalised cxcywh; indices: the matcher's B pairs
    (query_idx, target_idx); num_boxes: the number of target boxes in the batch (at least 1). Both
    losses are sums over matched pairs divided by num_boxes: L1 over the 4 coordinates, and 1 - GIoU
    on xyxy boxes, as `SetCriterion`. Prints OK or a hint; returns True when it passes.
    """
    outputs, targets, indices = _loss_case()
    criterion = SetCriterion(5, HungarianMatcher(1, 5, 2), {})
    num_boxes = float(sum(len(t["labels"]) for t in targets))
    want = criterion.layer_losses(outputs, targets, indices, num_boxes, with_class_error=False)
    got, error = call(fn, outputs["pred_boxes"], targets, indices, num_boxes)
    if error:
        return verdict(False, error)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(x, Tensor) and x.numel() == 1 for x in got)):
        return verdict(False, "return a pair of scalar Tensors (loss_bbox, loss_giou).")
    loss_bbox, loss_giou = (x.reshape(()) for x in got)
    src = torch.cat([outputs["pred_boxes"][b, q] for b, (q, _) in enumerate(indices)])     # (N, 4)
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])                 # (N, 4)
    if not close(loss_bbox, want["loss_bbox"]):
        if close(loss_bbox, F.l1_loss(src, tgt)):
            return verdict(False, "loss_bbox: sum the L1 distances of the matched pairs and divide by "
                                   "num_boxes, not the mean over the 4 * N coordinates.")
        return verdict(False, "loss_bbox differs: gather the matched predictions pred_boxes[b, query_idx] and "
                               "targets[b]['boxes'][target_idx] (in the same order), then "
                               "|pred - target|.sum() / num_boxes.")
    if not close(loss_giou, want["loss_giou"]):
        per_pair = 1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))  # (N,)
        if close(loss_giou, per_pair.mean()):
            return verdict(False, "loss_giou: sum 1 - GIoU over the matched pairs and divide by num_boxes.")
        return verdict(False, "loss_giou differs: convert both boxes to xyxy (box_cxcywh_to_xyxy) first, then "
                               "(1 - GIoU(matched pred, matched target)).sum() / num_boxes, over the matched "
                               "pairs only (the diagonal of the pairwise GIoU).")
    return verdict(True, "your loss_bbox and loss_giou match SetCriterion (sums over matched pairs / num_boxes).")

