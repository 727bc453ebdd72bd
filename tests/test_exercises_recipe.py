"""Notebook 10's checkers accept correct solutions, reject the likely wrong ones with their hint, never raise."""

import torch
import torch.nn.functional as F

from detr_full.exercises.recipe import check_fold_fine_cells, check_token_anchors


def _anchors(mask, offset=0.5, cells=2.0, own_size=True, clamp=True, order="row"):
    """A learner's loop version; the keyword arguments make the likely mistakes."""
    b, h, w = mask.shape
    out = torch.zeros(b, h * w, 4)
    for n in range(b):
        vw = float((~mask[n, 0]).sum()) if own_size else float(w)
        vh = float((~mask[n, :, 0]).sum()) if own_size else float(h)
        sw, sh = cells / vw, cells / vh
        if clamp:
            sw, sh = min(sw, 1.0), min(sh, 1.0)
        for i in range(h):
            for j in range(w):
                t = i * w + j if order == "row" else j * h + i
                out[n, t] = torch.tensor([(j + offset) / vw, (i + offset) / vh, sw, sh])
    return out


def test_token_anchors_checker(verdict):
    assert verdict(check_token_anchors, _anchors, "OK:")
    assert not verdict(check_token_anchors, lambda m: None, "returns None")
    assert not verdict(check_token_anchors, lambda m: _anchors(m)[:, :, :2], "shape")
    assert not verdict(check_token_anchors, lambda m: _anchors(m, own_size=False), "unpadded")
    assert not verdict(check_token_anchors, lambda m: _anchors(m, offset=0.0), "left")
    assert not verdict(check_token_anchors, lambda m: _anchors(m, cells=1.0), "2 cells")
    assert not verdict(check_token_anchors, lambda m: _anchors(m, clamp=False), "clamp")
    assert not verdict(check_token_anchors, lambda m: _anchors(m, order="column"), "row by row")
    assert not verdict(check_token_anchors, lambda m: _anchors(m)[..., [1, 0, 3, 2]], "swapped")
    assert not verdict(check_token_anchors, lambda m: m.logical_not_(), "in place")


def _fold(values, coarse_hw, fine_hw):                   # via max-pool-like padding, not the package's
    (h, w), (h2, w2) = coarse_hw, fine_hw
    fine = F.pad(values[h * w:].view(1, 1, h2, w2), (0, 2 * w - w2, 0, 2 * h - h2))
    return values[:h * w].view(h, w) + F.avg_pool2d(fine, 2)[0, 0] * 4


def test_fold_fine_cells_checker(verdict):
    assert verdict(check_fold_fine_cells, _fold, "OK:")

    def even_only(values, coarse_hw, fine_hw):             # forgets the odd fine grids: raises there
        (h, w), (h2, w2) = coarse_hw, fine_hw
        return values[:h * w].view(h, w) + values[h * w:].view(h, 2, w, 2).sum((1, 3))
    assert not verdict(check_fold_fine_cells, even_only, "raised", "5 x 4")

    def mean(values, coarse_hw, fine_hw):
        (h, w), (h2, w2) = coarse_hw, fine_hw
        fine = F.pad(values[h * w:].view(1, 1, h2, w2), (0, 2 * w - w2, 0, 2 * h - h2))
        return values[:h * w].view(h, w) + F.avg_pool2d(fine, 2)[0, 0]
    assert not verdict(check_fold_fine_cells, mean, "do not average")

    def fine_only(values, coarse_hw, fine_hw):
        return _fold(values, coarse_hw, fine_hw) - values[:coarse_hw[0] * coarse_hw[1]].view(coarse_hw)
    assert not verdict(check_fold_fine_cells, fine_only, "coarse cell's own value")

    def consecutive(values, coarse_hw, fine_hw):
        (h, w) = coarse_hw
        return values[:h * w].view(h, w) + values[h * w:].view(h, w, 4).sum(-1)
    assert not verdict(check_fold_fine_cells, consecutive, "row by row")
    assert not verdict(check_fold_fine_cells, lambda v, c, f: v[:c[0] * c[1]].view(c), "fine cells' values")
