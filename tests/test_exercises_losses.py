"""The notebook 06 checkers: a correct solution passes, wrong ones fail with a hint, nothing raises."""

import torch
import torch.nn.functional as F
import torchvision

from detr_full.box_ops import box_cxcywh_to_xyxy
from detr_full.exercises.losses import check_box_losses, check_giou, check_loss_labels


def giou(boxes1, boxes2, clamp=True, enclosing_term=True):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    wh = wh.clamp(min=0) if clamp else wh
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    enclosing_wh = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return inter / union - ((enclosing - union) / enclosing if enclosing_term else 0)


def test_reference_giou_is_torchvision():
    boxes = torch.tensor([[0., 0., 2., 2.], [1., 1., 3., 3.], [5., 5., 6., 7.]])
    torch.testing.assert_close(giou(boxes, boxes), torchvision.ops.generalized_box_iou(boxes, boxes))


def test_giou_checker(capsys):
    assert check_giou(giou)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_giou(lambda a, b: giou(a, b, enclosing_term=False))
    assert "plain IoU" in capsys.readouterr().out
    assert not check_giou(lambda a, b: giou(a, b, clamp=False))
    assert "Clamp" in capsys.readouterr().out
    assert not check_giou(lambda a, b: giou(b, a))
    assert "transposed" in capsys.readouterr().out


def loss_labels(pred_logits, targets, indices, num_classes, eos_coef, weighted=True):
    target_classes = torch.full(pred_logits.shape[:2], num_classes, dtype=torch.int64)
    for b, (q, t) in enumerate(indices):
        target_classes[b, q] = targets[b]["labels"][t]
    weight = torch.ones(num_classes + 1)
    weight[-1] = eos_coef
    return F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight if weighted else None)


def test_loss_labels_checker(capsys):
    assert check_loss_labels(loss_labels)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_loss_labels(lambda *a: loss_labels(*a, weighted=False))
    assert "eos_coef" in capsys.readouterr().out


def box_losses(pred_boxes, targets, indices, num_boxes, xyxy=True):
    src = torch.cat([pred_boxes[b, q] for b, (q, _) in enumerate(indices)])
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    loss_bbox = (src - tgt).abs().sum() / num_boxes
    if xyxy:
        src, tgt = box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)
    return loss_bbox, (1 - torch.diag(giou(src, tgt))).sum() / num_boxes


def test_box_losses_checker(capsys):
    assert check_box_losses(box_losses)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_box_losses(lambda *a: box_losses(*a, xyxy=False))
    assert "xyxy" in capsys.readouterr().out
    assert not check_box_losses(lambda p, t, i, n: box_losses(p, t, i, 1.0))
    assert "num_boxes" in capsys.readouterr().out


def test_checkers_never_raise_on_a_stub(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    for check in (check_giou, check_loss_labels, check_box_losses):
        assert check(stub) is False
        assert capsys.readouterr().out.startswith("not yet:")
        assert check(lambda *a: None) is False
        assert capsys.readouterr().out.startswith("not yet:")
