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

from detr_full.box_ops import (box_cxcywh_to_xyxy, generalized_box_iou, giou_broadcast,
                               paired_generalized_box_iou)
from detr_full.criterion import SetCriterion
from detr_full.matcher import HungarianMatcher
from detr_full.exercises.checking import STUB, call, close, failure, mistake, verdict


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
        ("boxes side by side", torch.tensor([[0., 0., 1., 2.]]), torch.tensor([[2., 0., 3., 1.]])),
        ("disjoint boxes", torch.tensor([[0., 0., 1., 1.]]), torch.tensor([[2., 2., 3., 3.]])),
        ("one box inside another", torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[1., 1., 2., 2.]])),
        ("3 x 5 random boxes", random_boxes[:3], random_boxes),
    ]
    for name, boxes1, boxes2 in cases:
        want = generalized_box_iou(boxes1, boxes2)                          # (N, M)
        got, error = call(fn, boxes1, boxes2)
        if error:
            pairwise = "must match the size" in error and len(boxes1) != len(boxes2)
            return failure(error, "the result is pairwise, (N, M): broadcast boxes1[:, None, :] against "
                           "boxes2[None, :, :]." if pairwise else "")
        if not isinstance(got, Tensor):
            return verdict(False, f"return a Tensor of shape (N, M), got {type(got).__name__}.")
        if got.shape != want.shape:
            if got.shape == want.shape[::-1] and len(boxes1) != len(boxes2):
                return verdict(False, f"[{name}] the result is transposed: entry [i, j] pairs boxes1[i] with boxes2[j].")
            return verdict(False, f"[{name}] the result should be pairwise, (N, M) = {tuple(want.shape)}; got "
                                   f"{tuple(got.shape)}. Broadcast boxes1[:, None, :] against boxes2[None, :, :].")
        if close(got, want):
            continue
        named = mistake(got, want, [
            (lambda: _giou_with(boxes1, boxes2, "no_enclosing_term"),
             "that is the plain IoU; subtract the part of the enclosing box C that the union does not cover: "
             "(area(C) - union) / area(C)."),
            (lambda: _giou_with(boxes1, boxes2, "clamp_product"),
             "clamp the intersection's width and height at 0 separately, before multiplying: two negative "
             "overlaps multiply to a positive area."),
            (lambda: _giou_with(boxes1, boxes2, "no_clamp"),
             f"GIoU should be {want.flatten()[0].item():.4f}. Clamp the intersection's width and height at 0 "
             "(disjoint boxes do not overlap negatively)."),
            (lambda: _giou_with(boxes1, boxes2, "union_with_intersection"),
             "the union counts the overlap once: area1 + area2 - intersection."),
            (lambda: _giou_with(boxes1, boxes2, "enclosing_minus_intersection"),
             "the penalty is the part of C outside the union, (area(C) - union) / area(C), not outside the "
             "intersection."),
            (lambda: _giou_with(boxes1, boxes2, "divide_by_union"),
             "the penalty is (area(C) - union) / area(C): divide by the enclosing box's area, not the union's."),
            (lambda: _giou_with(boxes1, boxes2, "add_penalty"),
             "subtract the penalty: GIoU = IoU - (area(C) - union) / area(C), which is at most the IoU."),
            (lambda: _giou_with(boxes1, boxes2, "enclosing_like_intersection"),
             "the enclosing box C takes the min of the top-left corners and the max of the bottom-right "
             "ones (the intersection does the opposite)."),
            (lambda: _giou_with(boxes1, boxes2, "plus_one"),
             "no + 1 in the widths and heights: these are continuous coordinates, width = x1 - x0."),
            (lambda: 1 - want, "return the GIoU itself; the loss 1 - GIoU comes later."),
            (lambda: giou_broadcast(box_cxcywh_to_xyxy(boxes1)[:, None], box_cxcywh_to_xyxy(boxes2)[None]),
             "the boxes are already xyxy here: use them as they are, without box_cxcywh_to_xyxy."),
        ])
        return verdict(False, f"[{name}] " + (named or f"expected {want.flatten()[:3].tolist()}..., got "
                                                         f"{got.flatten()[:3].tolist()}...; check the union "
                                                         "(area1 + area2 - intersection) and the enclosing box (min "
                                                         "of the top-left corners, max of the bottom-right corners)."))
    return verdict(True, "your GIoU matches detr_full.box_ops.generalized_box_iou (and torchvision's).")


def _giou_with(boxes1: Tensor, boxes2: Tensor, how: str) -> Tensor:
    """Pairwise GIoU of xyxy boxes (N, 4), (M, 4) -> (N, M) with one likely mistake `how`, to name it."""
    a, b = boxes1[:, None, :], boxes2[None, :, :]                          # (N, 1, 4), (1, M, 4)
    one = 1.0 if how == "plus_one" else 0.0
    area1 = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
    area2 = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    wh = torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2]) + one  # (N, M, 2)
    wh = wh if how in ("no_clamp", "clamp_product") else wh.clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    inter = inter.clamp(min=0) if how == "clamp_product" else inter
    union = area1 + area2 - (0 if how == "union_with_intersection" else inter)
    if how == "enclosing_like_intersection":
        enclosing_wh = torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])
    else:
        enclosing_wh = torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1] if how != "plus_one" else \
        (enclosing_wh[..., 0] + 1) * (enclosing_wh[..., 1] + 1)
    iou = inter / union
    if how == "no_enclosing_term":
        return iou
    uncovered = enclosing - (inter if how == "enclosing_minus_intersection" else union)
    penalty = uncovered / (union if how == "divide_by_union" else enclosing)
    return iou + penalty if how == "add_penalty" else iou - penalty


def _loss_case(num_classes: int = 5, seed: int = 0):
    """A batch of 3 images with 2, 0 and 4 targets; 7 queries (not K, so a logit tensor read with the
    wrong class axis raises); its Hungarian matching."""
    g = torch.Generator().manual_seed(seed)
    sizes = [2, 0, 4]
    centres = 0.25 + 0.5 * torch.rand(3, 7, 2, generator=g)
    outputs = {"pred_logits": torch.randn(3, 7, num_classes + 1, generator=g) * 2,
               "pred_boxes": torch.cat([centres, 0.1 + 0.3 * torch.rand(3, 7, 2, generator=g)], dim=-1)}
    targets = []
    for t in sizes:
        centre = 0.25 + 0.5 * torch.rand(t, 2, generator=g)
        targets.append({"labels": torch.randint(0, num_classes, (t,), generator=g),
                        "boxes": torch.cat([centre, 0.1 + 0.3 * torch.rand(t, 2, generator=g)], dim=1)})
    targets[2]["labels"][1] = 0  # class 0 among the labels, so a weight put at index 0 shows
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
    logits = outputs["pred_logits"]                                                   # (B, Q, K)
    for eos_coef in (0.1, 1.0):
        criterion = SetCriterion(num_classes, HungarianMatcher(1, 5, 2), {}, eos_coef=eos_coef)
        want = criterion.layer_losses(outputs, targets, indices, 5.0, with_class_error=False)["loss_ce"]
        got, error = call(fn, logits, targets, indices, num_classes, eos_coef)
        if error:
            return failure(error, "" if error == STUB else _loss_labels_error_hint(error))
        if not isinstance(got, Tensor) or got.numel() != 1:
            return verdict(False, "return the loss as a scalar Tensor.")
        if close(got.reshape(()), want):
            continue
        named = mistake(got.reshape(()), want, [
            (lambda how=how: _loss_labels_with(logits, targets, indices, num_classes, eos_coef, how), why)
            for how, why in _LOSS_LABELS_MISTAKES])
        return verdict(False, f"[eos_coef={eos_coef}] " + (
            named or f"expected {want.item():.4f}, got {got.item():.4f}. Every query gets the class num_classes "
                     "(no object) except the matched ones, which get their target's label; cross_entropy takes "
                     "(B, K, Q) logits, so transpose."))
    return verdict(True, "your loss_ce matches SetCriterion (no-object weight eos_coef, weighted mean).")


def _loss_labels_error_hint(error: str) -> str:
    if "Expected target size" in error:
        return "F.cross_entropy wants the classes in dim 1: pass logits.transpose(1, 2), (B, K, Q)."
    if "out of bounds" in error:
        return "\"no object\" is the class num_classes (the last of the K = num_classes + 1 logits)."
    if "weight" in error:
        return "the class weight needs K = num_classes + 1 entries: ones, with eos_coef at index num_classes."
    return ("target_classes = full((B, Q), num_classes), matched queries get their target's label, then "
            "F.cross_entropy(logits.transpose(1, 2), target_classes, weight) with weight[-1] = eos_coef.")


def _loss_labels_with(logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_classes: int,
                      eos_coef: float, how: str) -> Tensor:
    """loss_ce with one likely mistake `how`, to name it in a hint."""
    no_object = {"no_object_0": 0, "no_object_last_real": num_classes - 1,
                 "no_object_and_weight_last_real": num_classes - 1}.get(how, num_classes)
    target_classes = torch.full(logits.shape[:2], no_object)                                   # (B, Q)
    for b, (q, t) in enumerate(indices):
        labels = targets[b]["labels"]
        target_classes[b, q] = labels if how == "labels_unpermuted" else labels[t]
    weight = torch.full((num_classes + 1,), eos_coef if how == "weights_flipped" else 1.0)
    eos_index = {"eos_at_0": 0, "no_object_and_weight_last_real": num_classes - 1}.get(how, num_classes)
    weight[eos_index] = 1.0 if how == "weights_flipped" else eos_coef
    scores = logits.softmax(-1) if how == "double_softmax" else logits
    per_query = F.cross_entropy(scores.transpose(1, 2), target_classes, reduction="none")    # (B, Q)
    if how == "unweighted":
        return per_query.mean()
    if how == "eos_scales_all":
        return eos_coef * per_query.mean()
    if how == "matched_only":
        matched = torch.zeros_like(target_classes, dtype=torch.bool)
        for b, (q, _) in enumerate(indices):
            matched[b, q] = True
        return per_query[matched].mean()
    weighted = per_query * weight[target_classes]
    if how == "mean_over_queries":
        return weighted.mean()
    if how == "sum":
        return weighted.sum()
    return weighted.sum() / weight[target_classes].sum()


_LOSS_LABELS_MISTAKES = [
    ("unweighted", "give the no-object class the weight eos_coef: F.cross_entropy(..., weight=w) with "
                   "w = ones(K) and w[-1] = eos_coef."),
    ("mean_over_queries", "a weighted cross-entropy divides by the sum of the weights, not by B * Q "
                          "(F.cross_entropy with weight= does that)."),
    ("sum", "average, don't sum: the weighted mean, F.cross_entropy's default reduction."),
    ("eos_at_0", "the no-object weight goes at index num_classes (the last logit), not at index 0."),
    ("eos_scales_all", "eos_coef weighs only the no-object class (weight=w with w[-1] = eos_coef), not the "
                       "whole loss."),
    ("weights_flipped", "the weight is 1 for the real classes and eos_coef for no-object alone (w = ones(K), "
                        "w[-1] = eos_coef), not the other way round."),
    ("no_object_last_real", "\"no object\" is the class num_classes (the last of the K = num_classes + 1 "
                            "logits); num_classes - 1 is the last real category."),
    ("no_object_and_weight_last_real", "\"no object\" is the class num_classes (the last of the K = num_classes "
                                       "+ 1 logits); num_classes - 1 is the last real category."),
    ("no_object_0", "unmatched queries get the class num_classes (\"no object\", the last logit), not 0 (a "
                    "real category)."),
    ("labels_unpermuted", "query query_idx[i] gets the label of target target_idx[i]: "
                          "labels[target_idx], in the matcher's order, not the labels as they are stored."),
    ("matched_only", "every query is classified: the unmatched ones are trained to predict \"no object\" "
                     "(class num_classes), not left out."),
    ("double_softmax", "F.cross_entropy takes raw logits (it applies log_softmax itself): don't softmax first."),
]


def check_box_losses(fn: Callable[..., tuple[Tensor, Tensor]]) -> bool:
    """Check `fn(pred_boxes, targets, indices, num_boxes) -> (loss_bbox, loss_giou)`.

    pred_boxes (B, Q, 4) and the targets' boxes are normalised cxcywh; indices: the matcher's B pairs
    (query_idx, target_idx); num_boxes: the number of target boxes per process, averaged over all
    processes in distributed training (at least 1), so it need not equal the number of matched pairs
    of this batch. Both losses are sums over matched pairs divided by num_boxes: L1 over the 4
    coordinates, and 1 - GIoU on xyxy boxes, as `SetCriterion`. Prints OK or a hint; returns True
    when it passes.
    """
    outputs, targets, indices = _loss_case()
    criterion = SetCriterion(5, HungarianMatcher(1, 5, 2), {})
    pred_boxes = outputs["pred_boxes"]                                                      # (B, Q, 4)
    src = torch.cat([pred_boxes[b, q] for b, (q, _) in enumerate(indices)])                 # (N, 4)
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])                 # (N, 4)
    stored = torch.cat([t["boxes"] for t in targets])                                       # (N, 4), unpermuted
    first_queries = torch.cat([pred_boxes[b, :len(t["boxes"])] for b, t in enumerate(targets)])  # (N, 4), unmatched
    num_pairs = len(src)
    src_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)
    # In distributed training num_boxes is the average over processes: here the other processes'
    # images would hold more boxes, so dividing by the number of matched pairs is wrong.
    for num_boxes, case in ((float(num_pairs), "one process"), (num_pairs + 2.5, "num_boxes from all processes")):
        want = criterion.layer_losses(outputs, targets, indices, num_boxes, with_class_error=False)
        got, error = call(fn, pred_boxes, targets, indices, num_boxes)
        if error:
            return failure(error, "convert both boxes to xyxy (box_cxcywh_to_xyxy) before the GIoU."
                           if "xyxy" in error else "")
        if not (isinstance(got, (tuple, list)) and len(got) == 2
                and all(isinstance(x, Tensor) and x.numel() == 1 for x in got)):
            return verdict(False, "return a pair of scalar Tensors (loss_bbox, loss_giou).")
        loss_bbox, loss_giou = (x.reshape(()) for x in got)
        if close(loss_bbox, want["loss_giou"]) and close(loss_giou, want["loss_bbox"]):
            return verdict(False, "the two losses are swapped: return (loss_bbox, loss_giou), the L1 first.")
        per_pair = "divide by num_boxes (the number of target boxes over all processes), not by the number " \
                   "of matched pairs: in distributed training the two differ."
        if not close(loss_bbox, want["loss_bbox"]):
            l1 = (src - tgt).abs().sum()
            named = mistake(loss_bbox, want["loss_bbox"], [
                (lambda: F.l1_loss(src, tgt), "loss_bbox: sum the L1 distances of the matched pairs and divide "
                                              "by num_boxes, not the mean over the 4 * N coordinates."),
                (lambda: l1 / num_pairs, f"loss_bbox: {per_pair}"),
                (lambda: l1, "loss_bbox: divide the sum by num_boxes."),
                (lambda: 5 * l1 / num_boxes, "return the unweighted loss; the weight bbox_loss_coef = 5 is "
                                             "applied later, through the weight_dict."),
                (lambda: F.smooth_l1_loss(src, tgt, reduction="sum") / num_boxes,
                 "loss_bbox is the plain L1 loss, |pred - target|, not smooth L1 (Fast R-CNN's)."),
                (lambda: (first_queries - tgt).abs().sum() / num_boxes,
                 "loss_bbox: take the matched queries, pred_boxes[b, query_idx], not the first T_b queries of "
                 "each image."),
                (lambda: (src - tgt).pow(2).sum() / num_boxes,
                 "loss_bbox is the L1 loss: absolute differences, not squared ones."),
                (lambda: (src_xyxy - tgt_xyxy).abs().sum() / num_boxes,
                 "loss_bbox is the L1 distance of the cxcywh boxes as given; convert to xyxy only for the GIoU."),
                (lambda: (src - stored).abs().sum() / num_boxes,
                 "loss_bbox: take targets[b]['boxes'][target_idx], in the matcher's order: the targets are not "
                 "stored in the order of the queries they are matched to."),
            ])
            return verdict(False, f"[{case}] " + (named or (
                "loss_bbox differs: gather the matched predictions pred_boxes[b, query_idx] and "
                "targets[b]['boxes'][target_idx] (in the same order), then |pred - target|.sum() / num_boxes.")))
        if not close(loss_giou, want["loss_giou"]):
            giou = paired_generalized_box_iou(src_xyxy, tgt_xyxy)                           # (N,)
            named = mistake(loss_giou, want["loss_giou"], [
                (lambda: (1 - giou).mean(), f"loss_giou: {per_pair}"),
                (lambda: (1 - giou).sum(), "loss_giou: divide the sum by num_boxes."),
                (lambda: 2 * (1 - giou).sum() / num_boxes, "return the unweighted loss; the weight "
                                                            "giou_loss_coef = 2 is applied later, through the "
                                                            "weight_dict."),
                (lambda: (1 - giou_broadcast(src, tgt)).sum() / num_boxes,
                 "loss_giou: convert both boxes to xyxy (box_cxcywh_to_xyxy) first: the boxes are cxcywh."),
                (lambda: (1 - generalized_box_iou(src_xyxy, tgt_xyxy)).sum() / num_boxes,
                 "loss_giou: only the matched pairs count, the diagonal of the pairwise GIoU (or "
                 "paired_generalized_box_iou), not every prediction against every target."),
                (lambda: -giou.sum() / num_boxes, "loss_giou is 1 - GIoU (a GIoU of 1 costs nothing), not -GIoU."),
                (lambda: giou.sum() / num_boxes, "loss_giou is 1 - GIoU: the loss must fall as the boxes overlap "
                                                  "more."),
            ])
            return verdict(False, f"[{case}] " + (named or (
                "loss_giou differs: convert both boxes to xyxy (box_cxcywh_to_xyxy) first, then "
                "(1 - GIoU(matched pred, matched target)).sum() / num_boxes, over the matched pairs only "
                "(the diagonal of the pairwise GIoU).")))
    return verdict(True, "your loss_bbox and loss_giou match SetCriterion (sums over matched pairs / num_boxes).")
