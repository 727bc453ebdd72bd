"""Notebook 14's checkers accept correct solutions, reject the likely wrong ones with their hint, never raise."""

from detr_full.exercises.trees import check_crowns_in_tile, check_tile_origins


def _origins(size, tile):                                 # a learner's loop
    n = max(size // tile, 1)
    if n == 1:
        return [0]
    step = (size - tile) / (n - 1)
    return [int(i * step + 0.5) for i in range(n)]


def test_tile_origins_checker(verdict):
    assert verdict(check_tile_origins, _origins, "OK:")
    assert not verdict(check_tile_origins, lambda s, t: None, "returns None")
    assert not verdict(check_tile_origins, lambda s, t: list(range(0, s - t + 1, t)), "leave the last")
    assert not verdict(check_tile_origins, lambda s, t: list(range(0, s, t)), "past the photograph")
    overlapping = lambda s, t: [round(i * (s - t) / max(-(-s // t) - 1, 1)) for i in range(-(-s // t))]  # noqa: E731
    assert not verdict(check_tile_origins, overlapping, "overlap")
    assert not verdict(check_tile_origins, lambda s, t: 1 / 0, "ZeroDivisionError")


def _crowns(boxes, x, y, tile, min_inside, clip=True, shift=True, by="area", keep_any=False):
    out = []
    for x0, y0, x1, y1 in boxes:
        ix0, iy0, ix1, iy1 = max(x0, x), max(y0, y), min(x1, x + tile), min(y1, y + tile)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        share = ((ix1 - ix0) * (iy1 - iy0)) / ((x1 - x0) * (y1 - y0)) if by == "area" else \
            min((ix1 - ix0) / (x1 - x0), (iy1 - iy0) / (y1 - y0))
        if keep_any or share >= min_inside:
            box = (ix0, iy0, ix1, iy1) if clip else (x0, y0, x1, y1)
            out.append(tuple(v - (x if i % 2 == 0 else y) for i, v in enumerate(box)) if shift else box)
    return out


def test_crowns_in_tile_checker(verdict):
    assert verdict(check_crowns_in_tile, _crowns, "OK:")
    assert not verdict(check_crowns_in_tile, lambda b, x, y, t, m: _crowns(b, x, y, t, m, clip=False), "clip")
    assert not verdict(check_crowns_in_tile, lambda b, x, y, t, m: _crowns(b, x, y, t, m, shift=False),
                        "subtract the tile's corner")
    assert not verdict(check_crowns_in_tile, lambda b, x, y, t, m: _crowns(b, x, y, t, m, by="side"),
                        "compare areas")
    assert not verdict(check_crowns_in_tile, lambda b, x, y, t, m: _crowns(b, x, y, t, m, keep_any=True),
                        "sliver")
    assert not verdict(check_crowns_in_tile, lambda b, x, y, t, m: None, "return a list")
