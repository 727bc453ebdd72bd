"""Checkers for notebook 14 (DETR on real photographs): cutting a photograph into tiles.

    check_tile_origins(fn)    fn(size, tile) -> the starts of non-overlapping tiles along one side
    check_crowns_in_tile(fn)  fn(boxes [(x0, y0, x1, y1)], x, y, tile, min_inside) -> the tile's boxes

Each prints "OK: ..." or "not yet: <hint>" and returns True or False; a wrong answer never raises.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from detr_full.data.trees import crowns_in_tile, tile_origins
from detr_full.exercises.checking import verdict

_SIDES = [(1249, 400), (1035, 400), (400, 400), (399, 400), (800, 400), (1000, 300), (2299, 400)]


def _call(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    try:
        return fn(*args), ""
    except Exception as e:  # a learner's bug becomes a hint
        return None, f"your function raised {type(e).__name__}: {e}"


def check_tile_origins(fn: Callable[[int, int], Any]) -> bool:
    """fn(size, tile) -> list of ints: where the tiles along a side of `size` px start. As many tiles of
    `tile` px as fit without overlapping, spread evenly: the first at 0, the last ending at `size`."""
    for size, tile in _SIDES:
        expected = tile_origins(size, "val", tile)
        out, error = _call(fn, size, tile)
        if error:
            return verdict(False, error)
        if out is None:
            return verdict(False, "the function returns None; return a list of tile starts.")
        try:
            got = [int(round(float(v))) for v in out]
        except (TypeError, ValueError):
            return verdict(False, f"return a list of numbers, not {type(out).__name__}.")
        case = f"for a side of {size} px and tiles of {tile} px"
        if len(got) == len(expected) and all(abs(a - b) <= 1 for a, b in zip(got, expected)) and \
                (len(got) == 1 or got[-1] + tile == size) and all(b - a >= tile for a, b in zip(got, got[1:])):
            continue                                   # rounding a half pixel either way is fine
        if got == list(range(0, size - tile + 1, tile)) and got != expected:
            return verdict(False, f"{case} your tiles sit side by side from 0 and leave the last "
                           f"{size - (got[-1] + tile) if got else size} px out: spread them so the last ends at {size}.")
        if got and got[-1] + tile > size:
            return verdict(False, f"{case} a tile starting at {got[-1]} runs past the photograph's edge ({size} px).")
        if any(b - a < tile for a, b in zip(got, got[1:])):
            return verdict(False, f"{case} your tiles overlap ({got}): a crown in two val tiles would be counted "
                           "twice. Use only as many tiles as fit whole: size // tile.")
        if len(got) != len(expected):
            return verdict(False, f"{case} expected {len(expected)} tile(s) ({expected}), got {len(got)} ({got}).")
        return verdict(False, f"{case} expected {expected}, got {got}.")
    return verdict(True, "as many whole tiles as fit, spread from 0 to the edge, never overlapping "
                   "(detr_full.data.trees.tile_origins does this for the val split).")


def _inside(boxes: list[tuple], x: int, y: int, tile: int, min_inside: float, clip: bool = True,
            measure: str = "area", shift: bool = True) -> list[tuple]:
    """The rule written out apart from the package's, or what a likely mistake makes of it."""
    kept = []
    for x0, y0, x1, y1 in boxes:
        cx0, cy0, cx1, cy1 = max(x0, x), max(y0, y), min(x1, x + tile), min(y1, y + tile)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        share = (cx1 - cx0) * (cy1 - cy0) / ((x1 - x0) * (y1 - y0)) if measure == "area" else \
            min((cx1 - cx0) / (x1 - x0), (cy1 - cy0) / (y1 - y0))
        if share >= min_inside:
            dx, dy = (x, y) if shift else (0, 0)
            kept.append((cx0 - dx, cy0 - dy, cx1 - dx, cy1 - dy) if clip else (x0 - dx, y0 - dy, x1 - dx, y1 - dy))
    return kept


_BOXES = [(10, 10, 50, 40),        # inside the tile at (0, 0)
          (380, 50, 420, 90),      # half of it inside (the share decides: exactly 0.5)
          (390, 100, 430, 140),    # a quarter inside
          (370, 370, 430, 430),    # a corner: half the width, half the height: a quarter of the area
          (150, 390, 170, 480),    # 10 of its 90 px of height inside
          (500, 500, 520, 530)]    # in another tile


def _as_boxes(out: Any) -> list[tuple] | None:
    try:
        rows = out.tolist() if isinstance(out, torch.Tensor) else list(out)
        return sorted(tuple(round(float(v), 3) for v in row) for row in rows)
    except (TypeError, ValueError):
        return None


def check_crowns_in_tile(fn: Callable[[list, int, int, int, float], Any]) -> bool:
    """fn(boxes, x, y, tile, min_inside) -> the boxes of the tile whose top-left corner is (x, y), in the
    tile's own pixels, clipped to it; a box with less than `min_inside` of its area inside is dropped.
    Compared with detr_full.data.trees.crowns_in_tile's rule."""
    for (x, y), min_inside in (((0, 0), 0.5), ((200, 0), 0.5), ((0, 0), 0.25)):
        expected = _as_boxes(crowns_in_tile(_BOXES, x, y, 400, min_inside))
        assert expected == _as_boxes(_inside(_BOXES, x, y, 400, min_inside))     # the two writings agree
        out, error = _call(fn, list(_BOXES), x, y, 400, min_inside)
        if error:
            return verdict(False, error)
        got = _as_boxes(out) if out is not None else None
        if got is None:
            return verdict(False, "return a list of (x0, y0, x1, y1) boxes.")
        if got == expected:
            continue
        case = f"for the tile at ({x}, {y}) with min_inside {min_inside}"
        wrong = [(_inside(_BOXES, x, y, 400, min_inside, clip=False), "clip the kept boxes to the tile: a box "
                  "reaching past the edge would ask the model for pixels it is not shown."),
                 (_inside(_BOXES, x, y, 400, min_inside, shift=False) if (x, y) != (0, 0) else None, "move the boxes into the "
                  "tile's own pixels: subtract the tile's corner (x, y)."),
                 (_inside(_BOXES, x, y, 400, min_inside, measure="side"), "compare areas: the share of the box's "
                  "area inside the tile, not of its width or height alone."),
                 (_inside(_BOXES, x, y, 400, 1e-9), "drop a box when less than min_inside of its area is inside: "
                  "a sliver of a crown is not a tree the model could box.")]
        for boxes, hint in wrong:
            if boxes is not None and _as_boxes(boxes) == got:
                return verdict(False, f"{case}: {hint}")
        return verdict(False, f"{case} expected {len(expected)} boxes {expected}, got {len(got)}: {got}.")
    return verdict(True, "cut crowns kept when at least min_inside of their area is inside, clipped, in the "
                   "tile's pixels (the rule of detr_full.data.trees.crowns_in_tile).")
