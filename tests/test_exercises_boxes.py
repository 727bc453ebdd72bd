"""The notebook-00 checkers accept a correct solution, reject wrong ones with a hint, never raise."""

import torch

from detr_full.box_ops import box_xyxy_to_cxcywh
from detr_full.data.shapes import SHAPES_CATEGORIES
from detr_full.exercises.boxes import (check_num_classes, check_size_class, check_xywh_to_cxcywh,
                                       reference_size_class, reference_xywh_to_cxcywh)


def _xywh_to_cxcywh(boxes_xywh, size):
    h, w = size
    x, y, bw, bh = boxes_xywh.unbind(-1)
    return torch.stack([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h], dim=-1)


def test_reference_xywh_to_cxcywh_by_hand():
    # 200 wide, 100 high: box from (10, 20) to (40, 60)
    out = reference_xywh_to_cxcywh(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (100, 200))
    torch.testing.assert_close(out, torch.tensor([[0.125, 0.4, 0.15, 0.4]]))


def test_check_xywh_to_cxcywh(capsys):
    assert check_xywh_to_cxcywh(_xywh_to_cxcywh)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_xywh_to_cxcywh(lambda b, s: None)
    assert "not yet" in capsys.readouterr().out
    assert not check_xywh_to_cxcywh(lambda b, s: _xywh_to_cxcywh(b, s[::-1]))          # (w, h) order
    assert "swapped" in capsys.readouterr().out
    pixels = lambda b, s: box_xyxy_to_cxcywh(torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1))  # noqa: E731
    assert not check_xywh_to_cxcywh(pixels)
    assert "in pixels" in capsys.readouterr().out
    corner = lambda b, s: b / torch.tensor([s[1], s[0], s[1], s[0]])  # noqa: E731  x, y kept as the centre
    assert not check_xywh_to_cxcywh(corner)
    assert "cx = x + w / 2" in capsys.readouterr().out


def test_check_xywh_to_cxcywh_survives_exceptions(capsys):
    def stub(boxes, size):
        raise NotImplementedError

    assert not check_xywh_to_cxcywh(stub)
    assert "stub" in capsys.readouterr().out
    assert not check_xywh_to_cxcywh(lambda b, s: b.reshape(-1))
    assert "shape" in capsys.readouterr().out


def test_check_num_classes(capsys):
    assert check_num_classes(lambda cats: max(c["id"] for c in cats) + 1)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_num_classes(len)
    assert "number of categories" in capsys.readouterr().out
    assert not check_num_classes(lambda cats: max(c["id"] for c in cats) + 2)
    assert "no object" in capsys.readouterr().out
    assert not check_num_classes(lambda cats: cats[-1]["id"] + 1)                     # unsorted case
    assert not check_num_classes(lambda cats: None)
    assert not check_num_classes(lambda cats: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_shapes_num_classes_is_19():
    assert max(c["id"] for c in SHAPES_CATEGORIES) + 1 == 19


def test_check_size_class(capsys):
    assert check_size_class(reference_size_class)
    assert capsys.readouterr().out.startswith("OK:")
    by_bbox = lambda a: reference_size_class({"area": a["bbox"][2] * a["bbox"][3]})  # noqa: E731
    assert not check_size_class(by_bbox)
    assert "'area'" in capsys.readouterr().out
    assert not check_size_class(lambda a: "small" if a["area"] < 32 else "medium" if a["area"] < 96 else "large")
    assert "32 ** 2" in capsys.readouterr().out
    assert not check_size_class(lambda a: None)
    assert "None" in capsys.readouterr().out


# ----------------------------------------------------------------------------- likely wrong answers

def _xyxy_normalised(boxes_xywh, size):              # corners instead of centre and size
    h, w = size
    x, y, bw, bh = boxes_xywh.unbind(-1)
    return torch.stack([x / w, y / h, (x + bw) / w, (y + bh) / h], dim=-1)


def _xywh_as_xyxy(boxes_xywh, size):                 # box_xyxy_to_cxcywh straight on COCO boxes
    h, w = size
    return box_xyxy_to_cxcywh(boxes_xywh) / torch.tensor([w, h, w, h])


def _size_in_pixels(boxes_xywh, size):
    h, w = size
    out = _xywh_to_cxcywh(boxes_xywh, size)
    return torch.cat([out[:, :2], out[:, 2:] * torch.tensor([w, h])], dim=1)


def _centre_in_pixels(boxes_xywh, size):
    h, w = size
    out = _xywh_to_cxcywh(boxes_xywh, size)
    return torch.cat([out[:, :2] * torch.tensor([w, h]), out[:, 2:]], dim=1)


def _in_place(boxes_xywh, size):                     # right values, but the caller's boxes are overwritten
    h, w = size
    boxes_xywh[:, :2] += boxes_xywh[:, 2:] / 2
    boxes_xywh /= torch.tensor([w, h, w, h])
    return boxes_xywh


def _midpoint_of_x_and_w(boxes_xywh, size):          # (x + w) / 2, as if w were the right edge
    h, w = size
    x, y, bw, bh = boxes_xywh.unbind(-1)
    return torch.stack([(x + bw) / 2 / w, (y + bh) / 2 / h, bw / w, bh / h], dim=-1)


def test_check_xywh_to_cxcywh_names_each_mistake(capsys):
    assert check_xywh_to_cxcywh(lambda b, s: _xywh_to_cxcywh(b, s).double())      # float64 is compared, not a crash
    assert capsys.readouterr().out.startswith("OK:")
    for wrong, words in ((_xyxy_normalised, "corners (xyxy)"), (_xywh_as_xyxy, "not corners"),
                         (lambda b, s: _xywh_to_cxcywh(b, s)[:, [0, 1, 3, 2]], "width before the height"),
                         (lambda b, s: _xywh_to_cxcywh(b, (s[1], s[1])), "not all four by W"),
                         (lambda b, s: _xywh_to_cxcywh(b, s[::-1]), "swapped in the scale"),
                         (_midpoint_of_x_and_w, "if w were the right edge"),
                         (lambda b, s: _xywh_to_cxcywh(b, (1, 1)), "in pixels"),
                         (_size_in_pixels, "width and height are still in pixels"),
                         (_centre_in_pixels, "centre is still in pixels"),
                         (_in_place, "changed its input `boxes_xywh` in place")):
        assert not check_xywh_to_cxcywh(wrong), wrong.__name__
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong.__name__, out)


def test_check_num_classes_names_each_mistake(capsys):
    for wrong, words in ((lambda cats: max(c["id"] for c in cats), "largest id + 1"),
                         (lambda cats: len(cats) + 1, "number of categories + 1"),
                         (lambda cats: cats[-1]["id"] + 1, "need not be sorted"),
                         (lambda cats: 91, "COCO's num_classes"),
                         (lambda cats: (max(c["id"] for c in cats) + 1) / 2, "whole number"),
                         (lambda cats: str(max(c["id"] for c in cats) + 1), "expected an int")):
        assert not check_num_classes(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out
    assert check_num_classes(lambda cats: torch.tensor([c["id"] for c in cats]).max() + 1)  # a 0-d tensor is fine
    assert check_num_classes(lambda cats: float(max(c["id"] for c in cats) + 1))
    assert capsys.readouterr().out.count("OK:") == 2


def test_check_size_class_names_each_mistake(capsys):
    side = lambda a: reference_size_class({"area": max(a["bbox"][2:]) ** 2})  # noqa: E731  longest side
    sqrt_vs_area = lambda a: reference_size_class({"area": a["area"] ** 0.5})  # noqa: E731  always "small"
    capital = lambda a: reference_size_class(a).capitalize()  # noqa: E731

    def large_never_reached(a):
        if a["area"] < 32 ** 2:
            return "small"
        elif a["area"] >= 32 ** 2:
            return "medium"
        return "large"

    by_64 = lambda a: "small" if a["area"] < 32 ** 2 else "medium" if a["area"] < 64 ** 2 else "large"  # noqa: E731
    for wrong, words in ((side, "'area'"), (sqrt_vs_area, "32 ** 2 = 1024"), (capital, "lowercase"),
                         (large_never_reached, "test the larger threshold first"), (by_64, "large: area >= 96^2")):
        assert not check_size_class(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out
    assert check_size_class(lambda a: "small" if a["area"] <= 32 ** 2 else "medium" if a["area"] <= 96 ** 2
                            else "large")     # ties are not tested: COCOeval counts them in both classes
    assert check_size_class(lambda a: "small" if a["area"] ** 0.5 < 32 else "medium" if a["area"] ** 0.5 < 96
                            else "large")     # comparing sides instead of areas is the same test
    assert capsys.readouterr().out.count("OK:") == 2
