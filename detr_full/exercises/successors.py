"""Checkers for notebook 09's exercises: the denoising attention mask (DN-DETR) and the repeated
targets of one-to-many matching (H-DETR's hybrid branch)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from detr_full.exercises.checking import call, failure, shape_problem, verdict
from detr_full.successors.denoising import denoising_attention_mask

_MASK_CASES = [(2, 3, 4), (1, 2, 3), (3, 1, 5), (0, 2, 3)]   # (num_groups, group_size, num_queries)


def _matching_first(num_groups: int, group_size: int, num_queries: int) -> Tensor:
    """The right mask for the order matching queries first, then the denoising groups."""
    n = num_groups * group_size
    order = torch.cat([torch.arange(n, n + num_queries), torch.arange(n)])
    return denoising_attention_mask(num_groups, group_size, num_queries)[order][:, order]


def check_denoising_mask(fn: Callable[[int, int, int], Any]) -> bool:
    """fn(num_groups, group_size, num_queries) -> (N + Q, N + Q) bool with N = num_groups * group_size,
    the denoising queries first: True where query i may attend to query j. Compared with
    `detr_full.successors.denoising.denoising_attention_mask`. Prints OK or a hint."""
    for groups, size, queries in _MASK_CASES:
        expected = denoising_attention_mask(groups, size, queries)
        n = groups * size
        out, error = call(fn, groups, size, queries)
        if error:
            return failure(error, "start from a (N + Q, N + Q) tensor of False and set blocks to True.")
        problem = shape_problem(out, expected.shape)
        if problem:
            return verdict(False, f"with {groups} groups of {size} and {queries} matching queries: {problem}")
        if out.dtype != torch.bool:
            return verdict(False, f"return a bool tensor (True = may attend), not {out.dtype}.")
        if torch.equal(out, expected):
            continue
        case = f"with {groups} groups of {size} and {queries} matching queries"
        if torch.equal(out, ~expected):
            return verdict(False, "True must mean 'may attend' (the convention of F.scaled_dot_product_attention's "
                           "bool mask); yours means 'blocked', as nn.MultiheadAttention's attn_mask does. Negate it.")
        if torch.equal(out, _matching_first(groups, size, queries)):
            return verdict(False, "the denoising queries come first (rows and columns 0 .. N-1), then the matching "
                           "queries; yours has them the other way round.")
        if out[n:, :n].any():
            return verdict(False, f"{case}: a matching query may see a denoising query. Block that: the denoising "
                           "queries are made from the ground truth, which does not exist at inference, so a "
                           "matching query that reads them learns to rely on the answer.")
        if not out[:, n:].all():
            blocked = "a denoising query" if not out[:n, n:].all() else "a matching query"
            return verdict(False, f"{case}: {blocked} cannot see a matching query. Every query may look at the "
                           "matching queries (they hold nothing the model will not have at inference).")
        if not torch.equal(out[:n, :n], expected[:n, :n]):
            leaks = out[:n, :n] & ~expected[:n, :n]
            if leaks.any():
                i, j = (int(x) for x in leaks.nonzero()[0])
                return verdict(False, f"{case}: denoising query {i} (group {i // size}) may see query {j} "
                               f"(group {j // size}). Groups must not see each other: each is its own noisy copy "
                               "of the same objects, and another group's boxes would give the answer away.")
            return verdict(False, f"{case}: a denoising query must see the others of its own group (itself "
                           "included): they are the other objects of the same image, as matching queries see each other.")
        return verdict(False, f"{case}: the mask differs from denoising_attention_mask.")
    return verdict(True, "denoising queries see their own group and the matching queries; matching queries see "
                   "only each other (the same as detr_full.denoising.denoising_attention_mask).")


def _targets_case() -> list[dict]:
    return [{"labels": torch.tensor([3, 1, 3]), "image_id": torch.tensor([7]),
             "boxes": torch.tensor([[0.2, 0.3, 0.1, 0.2], [0.6, 0.5, 0.3, 0.3], [0.8, 0.8, 0.2, 0.1]])},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4), "image_id": torch.tensor([8])}]


def _pairs(labels: Tensor, boxes: Tensor) -> list[tuple]:
    return sorted((int(l), *[round(float(x), 6) for x in b]) for l, b in zip(labels, boxes))


def check_repeat_targets(fn: Callable[[list[dict], int], Any]) -> bool:
    """fn(targets, k) -> the targets of one-to-many matching: every object k times (labels (k*T,),
    boxes (k*T, 4), each box still with its own label), other keys unchanged. Any order of the
    copies is right: the Hungarian matcher does not care. Prints OK or a hint."""
    for k in (3, 1):
        targets = _targets_case()
        given = [dict(t) for t in targets]         # the same tensors in dicts of our own, to see the inputs change
        out, error = call(fn, given, k)
        if error:
            return failure(error, "t['labels'].repeat(k) and t['boxes'].repeat(k, 1), in a new dict per image.")
        if any(set(g) != set(t) or any(g[key] is not t[key] for key in t) for g, t in zip(given, targets)):
            return verdict(False, "you changed the input dicts (t['labels'] = ...): the caller's targets now hold "
                           "the copies too, and the one-to-one branch still needs them as they were. Build a new "
                           "dict per image: {**t, 'labels': ..., 'boxes': ...}.")
        if not isinstance(out, list) or len(out) != len(targets) or not all(isinstance(t, dict) for t in out):
            return verdict(False, f"return a list of {len(targets)} dicts, one per image, like the input; got "
                           f"{type(out).__name__}.")
        for i, (t, o) in enumerate(zip(targets, out)):
            labels, boxes = o.get("labels"), o.get("boxes")
            if not isinstance(labels, Tensor) or not isinstance(boxes, Tensor):
                return verdict(False, f"image {i}: 'labels' and 'boxes' must be tensors in every dict.")
            rows = k * len(t["labels"])
            if k > 1 and boxes.shape == (len(t["labels"]), 4 * k):
                return verdict(False, "boxes.repeat(k) on a (T, 4) tensor repeats along the last axis: (T, 4k). "
                               "Repeat the rows: boxes.repeat(k, 1).")
            if labels.shape != (rows,) or boxes.shape != (rows, 4):
                return verdict(False, f"with k={k}, image {i} ({len(t['labels'])} objects) needs labels of shape "
                               f"({rows},) and boxes ({rows}, 4); got {tuple(labels.shape)} and {tuple(boxes.shape)}.")
            if labels.dtype != torch.int64:
                return verdict(False, f"labels must stay int64 (class indices); got {labels.dtype}.")
            expected = _pairs(t["labels"].repeat(k), t["boxes"].repeat(k, 1))
            if _pairs(labels, boxes) != expected:
                if sorted(labels.tolist()) == sorted(t["labels"].repeat(k).tolist()):
                    return verdict(False, f"image {i}: every label and every box is there k times, but some box now "
                                   "has another object's label: repeat labels and boxes the same way (both "
                                   ".repeat, or both .repeat_interleave).")
                return verdict(False, f"image {i}: each object (label and box) must appear exactly k = {k} times.")
            if set(o) != set(t) or not torch.equal(o["image_id"], t["image_id"]):
                return verdict(False, f"image {i}: keep the other keys ({', '.join(sorted(set(t) - {'labels', 'boxes'}))}) "
                               "unchanged: evaluation and the loss's bookkeeping still read them.")
    return verdict(True, "each object appears k times with its own label; with k copies of the targets the "
                   "Hungarian matcher gives every object k positive queries.")
