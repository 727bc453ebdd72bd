import pytest
import torch
import torchvision

from detr_full.box_ops import (box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou,
                               masks_to_boxes, paired_generalized_box_iou)


def test_box_cxcywh_to_xyxy():
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.2]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes), torch.tensor([[0., 0., 1., 1.], [0., .4, .5, .6]]))


def test_box_xyxy_to_cxcywh():
    boxes = torch.tensor([[10., 20., 30., 60.]])
    torch.testing.assert_close(box_xyxy_to_cxcywh(boxes), torch.tensor([[20., 40., 20., 40.]]))


def test_round_trip():
    boxes = torch.rand(50, 4)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)


def test_iou_hand_computed():
    a = torch.tensor([[0., 0., 2., 2.]])
    b = torch.tensor([[1., 1., 3., 3.], [2., 2., 4., 4.], [0., 0., 2., 2.]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 1.0]]))
    torch.testing.assert_close(union, torch.tensor([[7., 8., 4.]]))
    # disjoint boxes: enclosing box (0,0)-(4,4) has area 16, union 8 -> GIoU = 0 - 8/16
    assert generalized_box_iou(a, b)[0, 1].item() == pytest.approx(-0.5)


def test_generalized_box_iou_matches_torchvision():
    xy = torch.rand(20, 2)
    a = torch.cat([xy, xy + torch.rand(20, 2)], 1)
    xy = torch.rand(15, 2)
    b = torch.cat([xy, xy + torch.rand(15, 2)], 1)
    torch.testing.assert_close(generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b))


def test_paired_giou_is_the_diagonal():
    a, b = (torch.cat([xy, xy + torch.rand(9, 2)], 1) for xy in (torch.rand(9, 2), torch.rand(9, 2)))
    assert torch.equal(paired_generalized_box_iou(a, b), generalized_box_iou(a, b).diagonal())


def test_degenerate_boxes_raise_a_clear_error():
    good = torch.tensor([[0., 0., 1., 1.]])
    bad = torch.tensor([[0., 0., 1., 1.], [0.5, 0.5, 0.4, 0.9]])
    with pytest.raises(ValueError, match=r"boxes2: box 1 .* negative width or height"):
        generalized_box_iou(good, bad)


def test_golden_box_ops(golden):
    u = golden["units"]["box_ops"]
    torch.testing.assert_close(box_cxcywh_to_xyxy(u["cxcywh"]), u["xyxy"], rtol=0, atol=1e-6)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(u["cxcywh"])), u["roundtrip"], rtol=0, atol=1e-6)
    iou, union = box_iou(u["boxes1_xyxy"], u["boxes2_xyxy"])
    torch.testing.assert_close(iou, u["iou"], rtol=0, atol=1e-6)
    torch.testing.assert_close(union, u["union"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(generalized_box_iou(u["boxes1_xyxy"], u["boxes2_xyxy"]), u["giou"], rtol=0, atol=1e-6)
    assert torch.equal(masks_to_boxes(u["masks"]), u["masks_to_boxes"])  # incl. the empty mask's (1e8, 1e8, 0, 0)


def test_masks_to_boxes_hand_computed():
    masks = torch.zeros(1, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert masks_to_boxes(masks).tolist() == [[2., 1., 4., 2.]]
