"""Checkers for the exercises of notebooks/05_hungarian_matcher.ipynb.

Each checker calls the learner's function on small seeded cases, compares it with
`detr_full.matcher.HungarianMatcher`, prints "OK: ..." or "not yet: <hint>", and returns True or
False. A wrong answer never raises: the learner's exceptions are caught and reported as hints.

Dimension key: B batch, Q queries, K classes incl. no-object, T targets of one image.

    check_cost_matrix(fn)  fn(pred_logits, pred_boxes, tgt_labels, tgt_boxes, cost_class=1.0, cost_bbox=5.0,
                              cost_giou=2.0) -> (Q, T), one image
    check_matcher(fn)      fn(outputs, targets) -> [(query_idx, target_idx)] per image, as HungarianMatcher(1, 5, 2)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detr_full.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, giou_broadcast
from detr_full.matcher import HungarianMatcher
from detr_full.exercises.checking import STUB, call, failure, mistake, verdict

NUM_CLASSES = 7  # labels 0..6, logit 7 is "no object"


def _random_boxes(n: int, g: torch.Generator) -> Tensor:
    """(n, 4) valid normalised cxcywh boxes."""
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=g)
    size = 0.05 + 0.35 * torch.rand(n, 2, generator=g)
    return torch.cat([centre, size], dim=1)


def _batch(sizes: list[int], num_queries: int, seed: int) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    outputs = {"pred_logits": torch.randn(len(sizes), num_queries, NUM_CLASSES + 1, generator=g) * 2,
               "pred_boxes": torch.stack([_random_boxes(num_queries, g) for _ in sizes])}
    targets = [{"labels": torch.randint(0, NUM_CLASSES, (t,), generator=g), "boxes": _random_boxes(t, g)}
               for t in sizes]
    return outputs, targets


def check_cost_matrix(fn: Callable[..., Tensor]) -> bool:
    """Check `fn(pred_logits, pred_boxes, tgt_labels, tgt_boxes, cost_class=1.0, cost_bbox=5.0,
    cost_giou=2.0) -> (Q, T)` for ONE image.

    pred_logits (Q, K) raw logits (the last one is "no object"); pred_boxes (Q, 4) and tgt_boxes
    (T, 4) normalised cxcywh; tgt_labels (T,) int64. Entry [q, t] is the cost of matching query q
    to target t: cost_class * (-softmax prob of t's class) + cost_bbox * L1 + cost_giou * (-GIoU).
    The checker calls fn with the three weights as keywords. Prints OK or a hint; returns True when it passes.
    """
    outputs, targets = _batch([4], num_queries=6, seed=0)
    logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
    labels, tgt_boxes = targets[0]["labels"], targets[0]["boxes"]
    prob = logits.softmax(-1)                                                      # (Q, K)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))   # (Q, T)
    right = {"class": -prob[:, labels], "L1": torch.cdist(boxes, tgt_boxes, p=1), "GIoU": -giou}
    convert_first = ("convert both boxes to xyxy (box_cxcywh_to_xyxy) before generalized_box_iou: the "
                     "boxes are cxcywh.")
    # What each term becomes with a likely mistake, and the hint that names it.
    wrong = {
        "class": [
            (lambda: -logits.log_softmax(-1)[:, labels],
             "use the probability itself, -softmax(logits)[:, tgt_labels], not the log-probability "
             "(that is the cross-entropy of the loss, not the matching cost)."),
            (lambda: -logits[:, labels], "softmax the logits first: the cost uses probabilities."),
            (lambda: -logits.softmax(0)[:, labels],
             "softmax over the classes (dim -1), not over the queries (dim 0)."),
            (lambda: -logits.sigmoid()[:, labels],
             "DETR's class cost softmaxes over the K logits; a sigmoid per class belongs to the focal-loss "
             "successors (Deformable DETR, DINO)."),
            (lambda: -logits[:, :-1].softmax(-1)[:, labels],
             "softmax over all K logits, \"no object\" included, as the classifier does."),
            (lambda: prob[:, labels], "the class cost is minus the probability: a likely class must be cheap."),
            (lambda: 1 - prob[:, labels],
             "use -prob, as HungarianMatcher does (1 - prob gives the same matching, but not the same matrix)."),
        ],
        "L1": [
            (lambda: torch.cdist(boxes, tgt_boxes, p=2), "use the L1 distance (torch.cdist(..., p=1)), not the "
                                                          "Euclidean one (cdist's default p=2)."),
            (lambda: torch.cdist(boxes, tgt_boxes, p=1) / 4,
             "sum |pred - target| over the 4 coordinates (torch.cdist(..., p=1)), don't average them."),
            (lambda: torch.cdist(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes), p=1),
             "the L1 cost is on the cxcywh boxes as given; convert to xyxy only for the GIoU."),
        ],
        "GIoU": [
            (lambda: -giou_broadcast(boxes[:, None], tgt_boxes[None]), convert_first),
            (lambda: giou, "the GIoU cost is minus the GIoU: overlapping boxes must be cheap."),
            (lambda: 1 - giou,
             "use -GIoU, as HungarianMatcher does (1 - GIoU gives the same matching, but not the same matrix)."),
        ],
    }
    weight_of = {"class": "cost_class", "L1": "cost_bbox", "GIoU": "cost_giou"}
    weighted_sum = right["class"] + 5 * right["L1"] + 2 * right["GIoU"]
    terms = [
        ("the class cost", (1.0, 0.0, 0.0), "class",
         "softmax the logits over all K classes (no-object included), then take minus the probability "
         "of each target's class: -prob[:, tgt_labels], shape (Q, T)."),
        ("the L1 box cost", (0.0, 1.0, 0.0), "L1",
         "the L1 distance between every predicted and every target box, on cxcywh: "
         "torch.cdist(pred_boxes, tgt_boxes, p=1), shape (Q, T)."),
        ("the GIoU cost", (0.0, 0.0, 1.0), "GIoU",
         "minus the pairwise GIoU of the boxes converted to xyxy (box_cxcywh_to_xyxy, then "
         "generalized_box_iou), shape (Q, T)."),
        ("the weighted sum", (1.0, 5.0, 2.0), None,
         "the cost is cost_class * class + cost_bbox * L1 + cost_giou * GIoU cost, with the weights passed in."),
    ]
    for name, (wc, wb, wg), term, hint in terms:
        want = HungarianMatcher(wc, wb, wg).cost_matrix(outputs, targets)[0, :, :len(labels)]  # (Q, T)
        got, error = call(fn, logits, boxes, labels, tgt_boxes, cost_class=wc, cost_bbox=wb, cost_giou=wg)
        if error:
            return failure(error, convert_first if "xyxy" in error else "" if error == STUB else hint)
        if not isinstance(got, Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            transposed = shape == tuple(want.shape)[::-1]
            return verdict(False, f"the cost matrix should be a (Q, T) = {tuple(want.shape)} tensor, got "
                                   f"{shape}" + (": it is transposed, one row per query and one column "
                                                 "per target." if transposed else "."))
        if torch.allclose(got.float(), want, rtol=1e-4, atol=1e-5):
            continue
        if not torch.isfinite(got).all():
            return verdict(False, f"{name} has NaN or inf entries (a zero weight times NaN is still NaN). "
                                   "Usually that is a GIoU of boxes read in the wrong format, where a box has a "
                                   f"negative width: {convert_first}")
        named = None
        if term is not None:
            named = mistake(got, want, wrong[term] + [
                (lambda other=other: right[other],
                 f"with only {weight_of[term]} = 1 you returned the {other} term: each weight multiplies its "
                 "own term (cost_class the class cost, cost_bbox the L1, cost_giou the GIoU).")
                for other in right if other != term] + [
                (lambda: weighted_sum, f"use the weights you are given: the checker passed cost_class={wc}, "
                                       f"cost_bbox={wb}, cost_giou={wg}, not 1, 5, 2.")])
        return verdict(False, f"{name} differs: {named or hint}")
    return verdict(True, "your cost matrix matches HungarianMatcher.cost_matrix (class, L1 and GIoU terms).")


def _total_cost(cost: Tensor, rows: Tensor, cols: Tensor) -> float:
    return float(cost[rows, cols].sum())


def check_matcher(fn: Callable[[dict, list[dict]], list[tuple[Tensor, Tensor]]]) -> bool:
    """Check `fn(outputs, targets) -> [(query_idx, target_idx), ...]` against `HungarianMatcher(1, 5, 2)`.

    outputs: pred_logits (B, Q, K), pred_boxes (B, Q, 4) cxcywh; targets: B dicts with labels (T_b,)
    and boxes (T_b, 4) cxcywh. One pair of int64 tensors per image, min(Q, T_b) long, query indices
    ascending; an image without targets gives two empty tensors. Any optimal matching passes (ties are
    rare with random inputs). Prints OK or a hint; returns True when it passes.
    """
    matcher = HungarianMatcher(1, 5, 2)
    # The last case's optimum moves with each term: a matcher that uses IoU instead of GIoU, softmaxes
    # without the no-object logit, or weighs the terms otherwise (1, 5, 1 or 2, 5, 2) picks another one.
    for sizes, num_queries, seed in (([3], 5, 8), ([2, 0, 4], 6, 12), ([0, 0], 4, 4), ([5], 7, 19)):
        outputs, targets = _batch(sizes, num_queries, seed=seed)
        want = matcher(outputs, targets)
        cost = matcher.cost_matrix(outputs, targets) if sum(sizes) else None   # (B, Q, T_max)
        got, error = call(fn, outputs, targets)
        if error:
            return failure(error, "" if error == STUB else "per image: the (Q, T_b) cost matrix with weights "
                           "1, 5, 2, then scipy.optimize.linear_sum_assignment on it; two empty int64 tensors "
                           "when T_b = 0.")
        if not isinstance(got, (list, tuple)) or len(got) != len(sizes):
            return verdict(False, f"return a list with one (query_idx, target_idx) pair per image "
                                   f"({len(sizes)} here).")
        offsets = [sum(sizes[:b]) for b in range(len(sizes))]
        for b, (pair, (rows_ref, cols_ref)) in enumerate(zip(got, want)):
            if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, np.ndarray) for x in pair):
                return verdict(False, f"image {b}: convert linear_sum_assignment's numpy arrays to tensors: "
                                       "torch.as_tensor(x, dtype=torch.int64).")
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(x, Tensor) for x in pair)):
                return verdict(False, f"image {b}: each entry should be a pair of tensors (query_idx, target_idx).")
            rows, cols = pair
            if rows.dim() != 1 or cols.dim() != 1:
                return verdict(False, f"image {b}: query_idx and target_idx should be 1-D tensors, got shapes "
                                       f"{tuple(rows.shape)} and {tuple(cols.shape)}.")
            if rows.dtype != torch.int64 or cols.dtype != torch.int64:
                return verdict(False, f"image {b}: the indices should be int64 tensors "
                                       "(torch.as_tensor(x, dtype=torch.int64); torch.empty(0, dtype=torch.int64) "
                                       f"when there is nothing to match), got {rows.dtype} and {cols.dtype}.")
            if sizes[b] == 0:
                if len(rows) or len(cols):
                    return verdict(False, f"image {b} has no targets: return two empty int64 tensors.")
                continue
            if len(rows) != len(rows_ref) or len(cols) != len(rows_ref):
                whole_batch = len(rows) == min(num_queries, sum(sizes)) != len(rows_ref)
                return verdict(False, f"image {b}: {sizes[b]} targets and {num_queries} queries give "
                                       f"{len(rows_ref)} matched pairs, you returned {len(rows)}." + (
                                           " Match each image against its own targets only: split the cost "
                                           "matrix's columns per image (cost.split(sizes, -1))."
                                           if whole_batch else ""))
            pairs, pairs_ref = set(zip(rows.tolist(), cols.tolist())), set(zip(rows_ref.tolist(), cols_ref.tolist()))
            if pairs != pairs_ref and {(q, t) for t, q in pairs} == pairs_ref:
                return verdict(False, f"image {b}: the pair is swapped; return (query_idx, target_idx), the "
                                       "query indices first.")
            if pairs != pairs_ref and {(q, t - offsets[b]) for q, t in pairs} == pairs_ref:
                return verdict(False, f"image {b}: the target indices should count within the image "
                                       f"(0 .. {sizes[b] - 1}), not along the targets of the whole batch.")
            if rows.max() >= num_queries or cols.max() >= sizes[b]:
                return verdict(False, f"image {b}: an index is out of range; the first tensor indexes the "
                                       "queries, the second the targets.")
            if len(set(rows.tolist())) != len(rows) or len(set(cols.tolist())) != len(cols):
                return verdict(False, f"image {b}: a query or a target is used twice; the matching is one-to-one.")
            if not torch.equal(rows, rows.sort().values):
                return verdict(False, f"image {b}: sort the pairs by query index (linear_sum_assignment "
                                       "already returns the rows in order).")
            c = cost[b, :, :sizes[b]]                                                  # (Q, T_b)
            best, yours = _total_cost(c, rows_ref, cols_ref), _total_cost(c, rows, cols)
            if yours > best + 1e-5 * max(1.0, abs(best)):
                worst_rows, worst_cols = linear_sum_assignment(c.numpy(), maximize=True)
                if abs(yours - _total_cost(c, torch.as_tensor(worst_rows), torch.as_tensor(worst_cols))) < 1e-4:
                    return verdict(False, f"image {b}: your matching has the highest total cost ({yours:.3f}), the "
                                           f"optimum is {best:.3f}: minimise the cost (linear_sum_assignment's "
                                           "default), a good match has a low cost.")
                return verdict(False, f"image {b}: your matching costs {yours:.3f}, the "
                                       f"optimum is {best:.3f}. Build the (Q, T_b) cost matrix of each image "
                                       "(weights 1, 5, 2) and solve it with "
                                       "scipy.optimize.linear_sum_assignment.")
    return verdict(True, "your matcher gives optimal matchings, as HungarianMatcher(1, 5, 2), "
                          "including images without targets.")
