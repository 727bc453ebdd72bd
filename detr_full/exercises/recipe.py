"""Checkers for notebook 10 (learning in minutes): the anchors of query selection's proposals and
the fold of attention over both memory levels onto the coarse grid.

    check_token_anchors(fn)    fn(mask (B, h, w) bool, True on padding) -> (B, h*w, 4) cxcywh anchors
    check_fold_fine_cells(fn)  fn(values (L + L2,), (h, w), (h2, w2)) -> (h, w)

Each prints "OK: ..." or "not yet: <hint>" and returns True or False; a wrong answer never raises.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from detr_full.exercises.checking import call, close, failure, mistake, shape_problem, verdict
from detr_full.successors.fine_memory import on_coarse_cells
from detr_full.successors.query_selection import token_anchors


def _padding_mask(sizes: list[tuple[int, int]], h: int, w: int) -> Tensor:
    """(B, h, w) True outside each image's own (height, width) cells."""
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for b, (valid_h, valid_w) in enumerate(sizes):
        mask[b, :valid_h, :valid_w] = False
    return mask


# A wide padded batch; a tall one; a batch whose second image is one cell wide (its anchor must be
# clamped to the image: 2 cells of a 1-cell image would be a box of width 2).
_ANCHOR_CASES = [_padding_mask([(3, 5), (2, 3)], 3, 5), _padding_mask([(4, 2), (2, 2)], 4, 2),
                 _padding_mask([(2, 4), (2, 1)], 2, 4)]


def _anchors(mask: Tensor, centre_offset: float = 0.5, cells: float = 2.0, padded: bool = False,
             clamp: bool = True, column_major: bool = False, swap_xy: bool = False) -> Tensor:
    """The anchors, or what a likely mistake makes of them (written out apart from the package's)."""
    b, h, w = mask.shape
    valid_w = torch.full((b,), float(w)) if padded else (~mask[:, 0, :]).sum(1).float()   # (B,)
    valid_h = torch.full((b,), float(h)) if padded else (~mask[:, :, 0]).sum(1).float()
    xs = (torch.arange(w) + centre_offset)[None, :] / valid_w[:, None]                    # (B, w)
    ys = (torch.arange(h) + centre_offset)[None, :] / valid_h[:, None]                    # (B, h)
    cx, cy = xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)           # (B, h, w)
    size_w, size_h = cells / valid_w, cells / valid_h
    if clamp:
        size_w, size_h = size_w.clamp(max=1.0), size_h.clamp(max=1.0)
    if swap_xy:
        cx, cy, size_w, size_h = cy, cx, size_h, size_w
    boxes = torch.stack([cx, cy, size_w[:, None, None].expand(-1, h, w), size_h[:, None, None].expand(-1, h, w)], -1)
    return (boxes.transpose(1, 2) if column_major else boxes).flatten(1, 2)               # (B, L, 4)


def check_token_anchors(fn: Callable[[Tensor], Any]) -> bool:
    """fn(mask (B, h, w) bool, True on padding) -> (B, h*w, 4): each token's anchor (cx, cy, w, h),
    centred on its cell, 2 cells wide and high (at most the image), in units of the image's own
    unpadded size, tokens in row-major order. Compared with query_selection.token_anchors."""
    for mask in _ANCHOR_CASES:
        expected = token_anchors(mask)
        assert torch.allclose(expected, _anchors(mask))                 # the two writings agree
        out, error = call(fn, mask.clone())
        if error:
            return failure(error, "the valid width of image b is (~mask[b, 0, :]).sum(); a cell's centre is "
                           "(i + 0.5) / valid width.")
        problem = shape_problem(out, tuple(expected.shape))
        if problem:
            return verdict(False, f"for a mask of shape {tuple(mask.shape)}: {problem} One box per token: "
                           "(B, h * w, 4).")
        if close(out, expected):
            continue
        hint = mistake(out, expected, [
            (lambda: _anchors(mask, padded=True), "divide by the image's own (unpadded) width and height in cells, "
             "not by the padded grid's: DETR's boxes are fractions of the image, and the padding is not part of it."),
            (lambda: _anchors(mask, centre_offset=0.0), "a cell's centre is (i + 0.5) / width: yours is its left "
             "(or top) edge."),
            (lambda: _anchors(mask, centre_offset=1.0), "a cell's centre is (i + 0.5) / width: yours is its right "
             "(or bottom) edge."),
            (lambda: _anchors(mask, cells=1.0), "the anchor is 2 cells wide and high, not one."),
            (lambda: _anchors(mask, clamp=False), "clamp the anchor's size to 1: on an image one cell wide, "
             "2 cells would be a box twice the image."),
            (lambda: _anchors(mask, column_major=True), "the tokens are the grid flattened row by row "
             "(token t = row * w + column, as flatten(2) orders them); yours go column by column."),
            (lambda: _anchors(mask, swap_xy=True), "x (the column) comes first and divides by the width; y, by the "
             "height. Yours has them swapped."),
        ])
        return verdict(False, hint or f"for the padding mask of shape {tuple(mask.shape)} the anchors differ from "
                       "detr_full.successors.query_selection.token_anchors (compare out[0, :3]).")
    return verdict(True, "every token's anchor: 2 cells around its centre, in units of its image's own size "
                   "(the same as detr_full.successors.query_selection.token_anchors).")


# (h, w), (h2, w2): even fine grids, and odd ones (the image's height or width in fine cells odd)
_FOLD_CASES = [((2, 3), (4, 6)), ((3, 2), (5, 4)), ((2, 3), (3, 5))]


def _fold_by_loops(values: Tensor, coarse_hw: tuple[int, int], fine_hw: tuple[int, int], mean: bool = False,
                   fine_only: bool = False, coarse_only: bool = False) -> Tensor:
    """The fold written as loops, or what a likely mistake makes of it."""
    (h, w), (h2, w2) = coarse_hw, fine_hw
    coarse = values[:h * w].reshape(h, w)
    fine = values[h * w:].reshape(h2, w2)
    out = torch.zeros(h, w) if fine_only else coarse.clone()
    if coarse_only:
        return out
    for i in range(h):
        for j in range(w):
            block = fine[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            out[i, j] += block.mean() if mean else block.sum()
    return out


def _fold_as_blocks(values: Tensor, coarse_hw: tuple[int, int], fine_hw: tuple[int, int]) -> Tensor:
    """The mistake of reshaping the fine level as (h, w, 2, 2): neighbours in memory, not in the image."""
    (h, w), (h2, w2) = coarse_hw, fine_hw
    return values[:h * w].reshape(h, w) + values[h * w:].reshape(h, w, 2, 2).sum((-1, -2))


def check_fold_fine_cells(fn: Callable[[Tensor, tuple[int, int], tuple[int, int]], Any]) -> bool:
    """fn(values (L + L2,), coarse_hw (h, w), fine_hw (h2, w2)) -> (h, w): each coarse cell's value
    plus the values of the fine cells inside it (fine cells 2i and 2i + 1 lie in coarse cell i).
    Compared with fine_memory.on_coarse_cells."""
    g = torch.Generator().manual_seed(0)
    for coarse_hw, fine_hw in _FOLD_CASES:
        (h, w), (h2, w2) = coarse_hw, fine_hw
        values = torch.rand(h * w + h2 * w2, generator=g)
        expected = on_coarse_cells(values, coarse_hw, fine_hw)
        assert torch.allclose(expected, _fold_by_loops(values, coarse_hw, fine_hw))
        out, error = call(fn, values.clone(), coarse_hw, fine_hw)
        odd = f" (the fine grid here is {h2} x {w2} for a {h} x {w} coarse one)" if (h2, w2) != (2 * h, 2 * w) else ""
        if error:
            return failure(f"{error}{odd}", "pad the fine grid to (2h, 2w) with zeros, then sum each 2 x 2 block.")
        problem = shape_problem(out, (h, w))
        if problem:
            return verdict(False, problem + " One value per coarse cell.")
        if close(out, expected):
            continue
        hint = mistake(out, expected, [
            (lambda: _fold_by_loops(values, coarse_hw, fine_hw, fine_only=True), "add the coarse cell's own value: "
             "the first h * w values are the coarse tokens' and count too."),
            (lambda: _fold_by_loops(values, coarse_hw, fine_hw, coarse_only=True), "add the fine cells' values: "
             "the values after the first h * w are the fine tokens'."),
            (lambda: _fold_by_loops(values, coarse_hw, fine_hw, mean=True), "sum the fine cells inside a coarse "
             "cell, do not average them: attention weights add up, and a cell at an odd edge holds fewer."),
            (lambda: _fold_by_loops(values[list(range(h * w, len(values))) + list(range(h * w))], coarse_hw, fine_hw),
             "the coarse tokens come first (the first h * w values), then the fine ones."),
            (lambda: _fold_as_blocks(values, coarse_hw, fine_hw), "the fine tokens are the fine grid row by row: "
             "reshape them to (h2, w2) first; a coarse cell holds fine rows 2i, 2i + 1 and columns 2j, 2j + 1, "
             "not four consecutive tokens."),
        ])
        return verdict(False, hint or f"with a {h} x {w} coarse grid and a {h2} x {w2} fine one{odd} the result "
                       "differs from detr_full.successors.fine_memory.on_coarse_cells.")
    return verdict(True, "each coarse cell's value plus the fine cells inside it, odd fine grids included (the same "
                   "as detr_full.successors.fine_memory.on_coarse_cells).")
