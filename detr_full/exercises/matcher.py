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

import torch
from torch import Tensor

from detr_full.matcher import HungarianMatcher
from detr_full.exercises.checking import call, verdict

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
    # One cost at a time first, so a failure names the term that is wrong.
    terms = [
        ("the class cost", (1.0, 0.0, 0.0),
         "softmax the logits over all K classes (no-object included), then take minus the probability "
         "of each target's class: -prob[:, tgt_labels], shape (Q, T)."),
        ("the L1 box cost", (0.0, 1.0, 0.0),
         "the L1 distance between every predicted and every target box, on cxcywh: "
         "torch.cdist(pred_boxes, tgt_boxes, p=1), shape (Q, T)."),
        ("the GIoU cost", (0.0, 0.0, 1.0),
         "minus the pairwise GIoU of the boxes converted to xyxy (box_cxcywh_to_xyxy, then "
         "generalized_box_iou), shape (Q, T)."),
        ("the weighted sum", (1.0, 5.0, 2.0),
         "the cost is cost_class * class + cost_bbox * L1 + cost_giou * GIoU cost, with the weights passed in."),
    ]
    for name, (wc, wb, wg), hint in terms:
        want = HungarianMatcher(wc, wb, wg).cost_matrix(outputs, targets)[0, :, :len(labels)]  # (Q, T)
        got, error = call(fn, logits, boxes, labels, tgt_boxes, cost_class=wc, cost_bbox=wb, cost_giou=wg)
        if error:
            return verdict(False, error)
        if not isinstance(got, Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            return verdict(False, f"the cost matrix should be a (Q, T) = {tuple(want.shape)} tensor, got {shape}.")
        if not torch.allclose(got.float(), want, rtol=1e-4, atol=1e-5):
            return verdict(False, f"{name} differs: {hint}")
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
    for sizes, num_queries in (([3], 5), ([2, 0, 4], 6), ([0, 0], 4)):
        outputs, targets = _batch(sizes, num_queries, seed=sum(sizes) + num_queries)
        want = matcher(outputs, targets)
        cost = matcher.cost_matrix(outputs, targets) if sum(sizes) else None   # (B, Q, T_max)
        got, error = call(fn, outputs, targets)
        if error:
            return verdict(False, error)
        if not isinstance(got, (list, tuple)) or len(got) != len(sizes):
            return verdict(False, f"return a list with one (query_idx, target_idx) pair per image "
                                   f"({len(sizes)} here).")
        for b, (pair, (rows_ref, cols_ref)) in enumerate(zip(got, want)):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(x, Tensor) for x in pair)):
                return verdict(False, f"image {b}: each entry should be a pair of tensors (query_idx, target_idx).")
            rows, cols = pair
            if rows.dtype != torch.int64 or cols.dtype != torch.int64:
                return verdict(False, f"image {b}: the indices should be int64 tensors "
                                       "(torch.as_tensor(x, dtype=torch.int64)), got "
                                       f"{rows.dtype} and {cols.dtype}.")
            if sizes[b] == 0:
                if len(rows) or len(cols):
                    return verdict(False, f"image {b} has no targets: return two empty int64 tensors.")
                continue
            if len(rows) != len(rows_ref) or len(cols) != len(rows_ref):
                return verdict(False, f"image {b}: {sizes[b]} targets and {num_queries} queries give "
                                       f"{len(rows_ref)} matched pairs, you returned {len(rows)}.")
            if rows.max() >= num_queries or cols.max() >= sizes[b]:
                return verdict(False, f"image {b}: an index is out of range; the first tensor indexes the "
                                       "queries, the second the targets.")
            if len(set(rows.tolist())) != len(rows) or len(set(cols.tolist())) != len(cols):
                return verdict(False, f"image {b}: a query or a target is used twice; the matching is one-to-one.")
            if not torch.equal(rows, rows.sort().values):
                return verdict(False, f"image {b}: sort the pairs by query index (linear_sum_assignment "
                                       "already returns the rows in order).")
            c = cost[b, :, :sizes[b]]                                                  # (Q, T_b)
            best = _total_cost(c, rows_ref, cols_ref)
            if _total_cost(c, rows, cols) > best + 1e-5 * max(1.0, abs(best)):
                return verdict(False, f"image {b}: your matching costs {_total_cost(c, rows, cols):.3f}, the "
                                       f"optimum is {best:.3f}. Build the (Q, T_b) cost matrix of each image "
                                       "(weights 1, 5, 2) and solve it with "
                                       "scipy.optimize.linear_sum_assignment.")
    return verdict(True, "your matcher gives optimal matchings, as HungarianMatcher(1, 5, 2), "
                          "including images without targets.")
