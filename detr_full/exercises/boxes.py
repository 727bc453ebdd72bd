"""Checkers for notebook 00 (boxes and the COCO format).

Each `check_*` calls the learner's function on a few small cases, compares the answers with
`detr_full`, prints "OK: ..." or "not yet: <hint>", and returns True or False. A wrong answer, an
exception or an unfilled stub (returning None) never raises.

    check_xywh_to_cxcywh(fn)  fn(boxes_xywh (N, 4) absolute COCO boxes, size (h, w)) -> (N, 4) normalised cxcywh
    check_num_classes(fn)     fn(categories: list of {"id", "name"} dicts) -> int
    check_size_class(fn)      fn(annotation: COCO annotation dict) -> "small" | "medium" | "large"
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import torch
from torch import Tensor

from detr_full.box_ops import box_xyxy_to_cxcywh
from detr_full.exercises.checking import call, failure, mistake, verdict

SHAPES_IDS = (1, 3, 7, 12, 18)
# COCO 2017 uses ids 1..90 but skips these 10, so it has 80 categories and num_classes = 91.
COCO_MISSING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


# ----------------------------------------------------------------------------- xywh -> cxcywh

def reference_xywh_to_cxcywh(boxes_xywh: Tensor, size: tuple[int, int]) -> Tensor:
    """COCO boxes (N, 4) absolute xywh -> (N, 4) cxcywh normalised by the image size (h, w)."""
    h, w = size
    x, y, bw, bh = boxes_xywh.unbind(-1)
    boxes_xyxy = torch.stack([x, y, x + bw, y + bh], dim=-1)
    return box_xyxy_to_cxcywh(boxes_xyxy) / torch.tensor([w, h, w, h], dtype=boxes_xywh.dtype)


def _xywh_cases() -> list[tuple[Tensor, tuple[int, int]]]:
    g = torch.Generator().manual_seed(0)
    random_xy = torch.rand(6, 2, generator=g) * torch.tensor([300.0, 150.0])
    random_wh = torch.rand(6, 2, generator=g) * torch.tensor([100.0, 50.0]) + 1
    return [
        (torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (100, 200)),              # (h, w) = (100, 200): not square
        (torch.cat([random_xy, random_wh], dim=1), (200, 400)),
        (torch.tensor([[0.0, 0.0, 64.0, 48.0], [32.0, 0.0, 32.0, 48.0]]), (48, 64)),
    ]


def check_xywh_to_cxcywh(fn: Callable[[Tensor, tuple[int, int]], Tensor]) -> bool:
    """fn(boxes_xywh (N, 4) float, COCO [x, y, width, height] in pixels, size (h, w)) -> (N, 4)
    normalised [cx, cy, w, h] in [0, 1]. Prints OK or a hint; returns whether it is right."""
    name = "COCO xywh (absolute) -> normalised cxcywh"
    for boxes, size in _xywh_cases():
        out, error = call(fn, boxes.clone(), size)
        if error:
            return failure(error, "x0, y0, x1, y1 = x, y, x + w, y + h; then centre and size; then "
                           "divide by (W, H, W, H).")
        if out is None:
            return verdict(False, "the function returns None. Convert (x, y, w, h) to the box "
                            "centre and size, then divide x-quantities by the image width, y-quantities "
                            "by its height.")
        if not isinstance(out, Tensor) or out.shape != boxes.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            return verdict(False, f"expected a tensor of shape {tuple(boxes.shape)}, got {got}.")
        expected = reference_xywh_to_cxcywh(boxes, size)
        if torch.allclose(out.float(), expected, atol=1e-5):
            continue
        h, w = size
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype)
        x, y, bw, bh = boxes.unbind(-1)
        hint = mistake(out, expected, [
            (lambda: expected * scale,
             "right centre and size, but in pixels: divide cx and w by the image width, cy and h by its height."),
            (lambda: expected * scale / torch.tensor([h, w, h, w]),
             "x and y are swapped in the scale: size is (h, w), and cx, w go with the width."),
            (lambda: torch.stack([x, y, x + bw, y + bh], -1) / scale,
             "those are the normalised corners (xyxy); DETR wants the centre and the size: "
             "cx = (x + w / 2) / W, cy = (y + h / 2) / H, w / W, h / H."),
            (lambda: box_xyxy_to_cxcywh(boxes) / scale,
             "COCO boxes are [x, y, width, height], not corners, so box_xyxy_to_cxcywh can't take them "
             "as they are: make the corners first, x1 = x + w and y1 = y + h."),
            (lambda: torch.cat([expected[:, :2], expected[:, 2:] * scale[2:]], -1),
             "the centre is normalised but the width and height are still in pixels: divide them too."),
            (lambda: torch.cat([expected[:, :2] * scale[:2], expected[:, 2:]], -1),
             "the size is normalised but the centre is still in pixels: divide cx by W and cy by H too."),
            (lambda: expected[:, [0, 1, 3, 2]], "the order is cx, cy, w, h: the width before the height."),
            (lambda: expected * scale / w, "divide the x-quantities (cx, w) by the width W and the y-quantities "
                                           "(cy, h) by the height H, not all four by W."),
            (lambda: expected * scale / h, "divide the x-quantities (cx, w) by the width W and the y-quantities "
                                           "(cy, h) by the height H, not all four by H."),
            (lambda: torch.stack([(x + bw) / 2, (y + bh) / 2, bw, bh], -1) / scale,
             "(x + w) / 2 would be the centre if w were the right edge; in COCO it is the width: "
             "cx = x + w / 2, cy = y + h / 2."),
        ], atol=1e-4)
        if hint is None and torch.allclose(out[:, 2:].float(), expected[:, 2:], atol=1e-5):
            hint = ("w and h are right, the centre is not: cx = x + w / 2 (x is the left edge, "
                    "not the centre), cy = y + h / 2.")
        if hint is None:
            hint = "check against box_xyxy_to_cxcywh(xyxy) / (W, H, W, H) with xyxy = (x, y, x + w, y + h)."
        return verdict(False, f"for boxes {boxes[:1].tolist()}... and size {size}: {hint}")
    return verdict(True, name)


# ----------------------------------------------------------------------------- num_classes

def _num_classes_cases() -> list[tuple[list[dict[str, Any]], int]]:
    coco = [{"id": i, "name": f"class{i}"} for i in range(1, 91) if i not in COCO_MISSING_IDS]
    return [
        ([{"id": i, "name": f"shape{i}"} for i in SHAPES_IDS], 19),
        (coco, 91),
        ([{"id": 9, "name": "c"}, {"id": 2, "name": "a"}, {"id": 4, "name": "b"}], 10),  # not sorted by id
        ([{"id": 0, "name": "zero"}, {"id": 1, "name": "one"}], 2),
    ]


def check_num_classes(fn: Callable[[list[dict[str, Any]]], int]) -> bool:
    """fn(categories: COCO "categories" list of {"id": int, "name": str}) -> num_classes as DETR
    uses it (the class head then has num_classes + 1 logits). Prints OK or a hint."""
    name = "num_classes = max category id + 1"
    for categories, expected in _num_classes_cases():
        out, error = call(fn, [dict(c) for c in categories])
        if error:
            return failure(error, 'the largest "id" in the list, plus one.')
        if out is None:
            return verdict(False, "the function returns None; return an int.")
        if isinstance(out, bool) or not (isinstance(out, numbers.Real)
                                         or isinstance(out, Tensor) and out.numel() == 1):
            return verdict(False, f"expected an int, got {type(out).__name__}.")
        if not float(out).is_integer():
            return verdict(False, f"expected a whole number of classes, got {float(out)}.")
        got = int(out)
        if got == expected:
            continue
        ids = sorted(c["id"] for c in categories)
        if got == len(categories):
            hint = ("that is the number of categories. DETR keeps the raw category ids as labels and "
                    "uses them as logit indices, so the head needs an output for every id up to the "
                    "largest one.")
        elif got == len(categories) + 1:
            hint = ("that is the number of categories + 1. The labels are the raw category ids, so count "
                    "indices up to the largest id; and \"no object\" is not part of num_classes (the model "
                    "adds it as logit num_classes).")
        elif got == ids[-1]:
            hint = "almost: ids run from 0 to the largest id, so there are largest id + 1 indices."
        elif got == ids[-1] + 2:
            hint = ("don't count \"no object\" in num_classes: it is the extra logit at index "
                    "num_classes, added by the model (num_classes + 1 outputs).")
        elif got == categories[-1]["id"] + 1:
            hint = ("that is the last entry's id + 1, but the list need not be sorted by id: take the "
                    "largest id, max(c[\"id\"] for c in categories) + 1.")
        elif got == 91:
            hint = "91 is COCO's num_classes; compute it from the categories you are given."
        else:
            hint = "look at the largest id, not at the list's length or its last entry."
        return verdict(False, f"for ids {ids[:6]}{'...' if len(ids) > 6 else ''} you returned "
                        f"{got}, expected {expected}: {hint}")
    return verdict(True, name)


# ----------------------------------------------------------------------------- COCO size class

def reference_size_class(annotation: dict[str, Any]) -> str:
    """COCO's object size class from the annotation's `area` (segment area in px^2, not bbox w*h):
    small below 32^2, large from 96^2, medium in between (boundaries as in COCOeval up to ties)."""
    area = annotation["area"]
    if area < 32 ** 2:
        return "small"
    if area < 96 ** 2:
        return "medium"
    return "large"


def _size_cases() -> list[dict[str, Any]]:
    # Triangles fill about half their box: the bbox and the area disagree on purpose in some cases.
    return [
        {"bbox": [0.0, 0.0, 20.0, 20.0], "area": 400.0},            # small by both
        {"bbox": [5.0, 5.0, 40.0, 40.0], "area": 800.0},            # bbox 1600 (medium), area small
        {"bbox": [5.0, 5.0, 60.0, 50.0], "area": 2900.0},           # medium
        {"bbox": [0.0, 0.0, 130.0, 100.0], "area": 6500.0},         # bbox 13000 (large), area medium
        {"bbox": [10.0, 10.0, 120.0, 110.0], "area": 12000.0},      # large
        {"bbox": [1.0, 2.0, 31.5, 31.5], "area": 992.25},           # just below 32^2
        {"bbox": [0.0, 0.0, 97.0, 97.0], "area": 9409.0},           # just above 96^2
    ]


def check_size_class(fn: Callable[[dict[str, Any]], str]) -> bool:
    """fn(annotation: COCO annotation dict with "bbox" [x, y, w, h] and "area") -> "small",
    "medium" or "large" as COCOeval counts it. Prints OK or a hint."""
    name = "COCO size class from the annotation's area"
    cases = _size_cases()
    answers = []
    for ann in cases:
        out, error = call(fn, dict(ann))
        if error:
            return failure(error, 'compare annotation["area"] with 32 ** 2 and 96 ** 2.')
        answers.append(out)
    expected = [reference_size_class(a) for a in cases]
    if answers == expected:
        return verdict(True, name)
    if all(a is None for a in answers):
        return verdict(False, 'the function returns None; return "small", "medium" or "large".')

    def by_area(area_of: Callable[[dict[str, Any]], float]) -> list[str]:
        return [reference_size_class({"area": area_of(a)}) for a in cases]

    from_the_box = [by_area(lambda a: a["bbox"][2] * a["bbox"][3]),
                    by_area(lambda a: max(a["bbox"][2:]) ** 2), by_area(lambda a: min(a["bbox"][2:]) ** 2)]
    if answers in from_the_box:
        hint = ("you used the box (its width * height or its sides). COCO measures size with the "
                "annotation's 'area' (the object's pixel area, from its segmentation), which is smaller "
                "than the box for a triangle or a star.")
    elif [a.strip().lower() if isinstance(a, str) else a for a in answers] == expected:
        hint = 'return the lowercase strings "small", "medium" and "large", as COCOeval names them.'
    elif all(a == "large" for a in answers) or all(a == "small" for a in answers):
        hint = "the thresholds are areas: 32 ** 2 = 1024 and 96 ** 2 = 9216 px^2."
    elif "large" not in answers and answers == [e if e != "large" else "medium" for e in expected]:
        hint = ('nothing came out "large": test the larger threshold first (area >= 96 ** 2), or an '
                "earlier `area >= 32 ** 2` branch catches the large objects too.")
    else:
        wrong = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
        hint = (f"annotation {cases[wrong]} gave {answers[wrong]!r}, expected {expected[wrong]!r}. "
                "small: area < 32^2, medium: 32^2 <= area < 96^2, large: area >= 96^2.")
    return verdict(False, hint)
