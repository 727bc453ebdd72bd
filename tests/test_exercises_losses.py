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


# ----------------------------------------------------------------------------- likely wrong answers

def giou_with(boxes1, boxes2, mistake):
    """Pairwise GIoU written as a learner would, with one mistake."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    if mistake == "clamp the product":
        inter = (wh[..., 0] * wh[..., 1]).clamp(min=0)
    else:
        wh = wh.clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - (0 if mistake == "union without - inter" else inter)
    outside = inter if mistake == "C - intersection" else union
    if mistake == "enclosing like intersection":
        enclosing_wh = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.max(boxes1[:, None, :2],
                                                                                       boxes2[None, :, :2])
    else:
        enclosing_wh = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.min(boxes1[:, None, :2],
                                                                                       boxes2[None, :, :2])
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    penalty = (enclosing - outside) / (union if mistake == "divide by union" else enclosing)
    return inter / union + penalty if mistake == "add the penalty" else inter / union - penalty


def giou_of_pairs(boxes1, boxes2):                     # boxes1[i] with boxes2[i] only, not pairwise
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    enclosing_wh = torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])
    enclosing = enclosing_wh[:, 0] * enclosing_wh[:, 1]
    return inter / union - (enclosing - union) / enclosing


def test_giou_checker_names_each_mistake(capsys):
    for wrong, words in (("clamp the product", "before multiplying"), ("union without - inter", "overlap once"),
                         ("divide by union", "not the union's"), ("add the penalty", "subtract the penalty"),
                         ("enclosing like intersection", "min of the top-left corners"),
                         ("C - intersection", "not outside the intersection")):
        assert not check_giou(lambda a, b: giou_with(a, b, wrong))
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong, out)
    assert check_giou(torchvision.ops.generalized_box_iou)
    assert capsys.readouterr().out.startswith("OK:")
    for wrong, words in ((lambda a, b: 1 - giou(a, b), "loss 1 - GIoU comes later"),
                         (lambda a, b: giou(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b)), "already xyxy"),
                         (lambda a, b: giou(a + torch.tensor([0, 0, 1, 1]), b + torch.tensor([0, 0, 1, 1])),
                          "no + 1"),                                   # old pixel convention: width = x1 - x0 + 1
                         (giou_of_pairs, "pairwise")):
        assert not check_giou(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_loss_labels_checker_names_each_mistake(capsys):
    assert check_loss_labels(loss_labels)
    assert capsys.readouterr().out.startswith("OK:")

    def with_target_classes(pred_logits, targets, indices, num_classes, eos_coef, fill=None, permute=True,
                            eos_index=-1, reduction="weighted mean", softmax_first=False, flip_weights=False):
        target_classes = torch.full(pred_logits.shape[:2], num_classes if fill is None else fill, dtype=torch.int64)
        for b, (q, t) in enumerate(indices):
            target_classes[b, q] = targets[b]["labels"][t] if permute else targets[b]["labels"]
        weight = torch.full((num_classes + 1,), eos_coef if flip_weights else 1.0)
        weight[eos_index] = 1.0 if flip_weights else eos_coef
        logits = pred_logits.softmax(-1) if softmax_first else pred_logits
        if reduction == "sum":
            return F.cross_entropy(logits.transpose(1, 2), target_classes, weight, reduction="sum")
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def weighted_mean_over_bq(pred_logits, targets, indices, num_classes, eos_coef):
        target_classes = torch.full(pred_logits.shape[:2], num_classes, dtype=torch.int64)
        for b, (q, t) in enumerate(indices):
            target_classes[b, q] = targets[b]["labels"][t]
        weight = torch.ones(num_classes + 1)
        weight[-1] = eos_coef
        per_query = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, reduction="none")
        return (per_query * weight[target_classes]).mean()

    def matched_only(pred_logits, targets, indices, num_classes, eos_coef):
        logits = torch.cat([pred_logits[b, q] for b, (q, _) in enumerate(indices)])
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        return F.cross_entropy(logits, labels)

    def no_transpose(pred_logits, targets, indices, num_classes, eos_coef):
        target_classes = torch.full(pred_logits.shape[:2], num_classes, dtype=torch.int64)
        return F.cross_entropy(pred_logits, target_classes)

    def no_object_minus_one(pred_logits, targets, indices, num_classes, eos_coef):
        target_classes = torch.full(pred_logits.shape[:2], -1, dtype=torch.int64)
        return F.cross_entropy(pred_logits.transpose(1, 2), target_classes)

    def weight_without_no_object(pred_logits, targets, indices, num_classes, eos_coef):
        target_classes = torch.full(pred_logits.shape[:2], num_classes, dtype=torch.int64)
        return F.cross_entropy(pred_logits.transpose(1, 2), target_classes, torch.ones(num_classes))

    for wrong, words in (
            (weighted_mean_over_bq, "sum of the weights"), (matched_only, "not left out"),
            (lambda *a: with_target_classes(*a, reduction="sum"), "don't sum"),
            (lambda *a: with_target_classes(*a, eos_index=0), "not at index 0"),
            (lambda *a: with_target_classes(*a, fill=0), "not 0 (a real category)"),
            (lambda p, t, i, n, e: with_target_classes(p, t, i, n, e, fill=n - 1), "num_classes - 1 is the last real"),
            (lambda p, t, i, n, e: with_target_classes(p, t, i, n, e, fill=n - 1, eos_index=n - 1),
             "num_classes - 1 is the last real"),
            (lambda *a: with_target_classes(*a, flip_weights=True), "not the other way round"),
            (lambda p, t, i, n, e: e * loss_labels(p, t, i, n, e, weighted=False), "not the whole loss"),
            (lambda *a: with_target_classes(*a, permute=False), "labels[target_idx]"),
            (lambda *a: with_target_classes(*a, softmax_first=True), "raw logits"),
            (no_transpose, "transpose(1, 2)"), (no_object_minus_one, "the class num_classes"),
            (weight_without_no_object, "num_classes + 1 entries")):
        assert not check_loss_labels(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_box_losses_checker_names_each_mistake(capsys):
    def gathered(pred_boxes, targets, indices):
        src = torch.cat([pred_boxes[b, q] for b, (q, _) in enumerate(indices)])
        return src, torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])

    def per_pair(pred_boxes, targets, indices, num_boxes):         # the case: right in one process only
        src, tgt = gathered(pred_boxes, targets, indices)
        return box_losses(pred_boxes, targets, indices, float(len(src)))

    def unpermuted(pred_boxes, targets, indices, num_boxes):
        src = torch.cat([pred_boxes[b, q] for b, (q, _) in enumerate(indices)])
        tgt = torch.cat([t["boxes"] for t in targets])
        giou_loss = (1 - torch.diag(giou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))).sum()
        return (src - tgt).abs().sum() / num_boxes, giou_loss / num_boxes

    def l1_on_xyxy(pred_boxes, targets, indices, num_boxes):
        src, tgt = (box_cxcywh_to_xyxy(x) for x in gathered(pred_boxes, targets, indices))
        return (src - tgt).abs().sum() / num_boxes, (1 - torch.diag(giou(src, tgt))).sum() / num_boxes

    def squared(pred_boxes, targets, indices, num_boxes):
        src, tgt = gathered(pred_boxes, targets, indices)
        return (src - tgt).pow(2).sum() / num_boxes, box_losses(pred_boxes, targets, indices, num_boxes)[1]

    def weighted(pred_boxes, targets, indices, num_boxes):
        loss_bbox, loss_giou = box_losses(pred_boxes, targets, indices, num_boxes)
        return 5 * loss_bbox, 2 * loss_giou

    def all_pairs(pred_boxes, targets, indices, num_boxes):
        src, tgt = (box_cxcywh_to_xyxy(x) for x in gathered(pred_boxes, targets, indices))
        return box_losses(pred_boxes, targets, indices, num_boxes)[0], (1 - giou(src, tgt)).sum() / num_boxes

    def minus_giou(pred_boxes, targets, indices, num_boxes):
        src, tgt = (box_cxcywh_to_xyxy(x) for x in gathered(pred_boxes, targets, indices))
        return box_losses(pred_boxes, targets, indices, num_boxes)[0], -torch.diag(giou(src, tgt)).sum() / num_boxes

    def giou_mean(pred_boxes, targets, indices, num_boxes):
        src, tgt = (box_cxcywh_to_xyxy(x) for x in gathered(pred_boxes, targets, indices))
        return box_losses(pred_boxes, targets, indices, num_boxes)[0], (1 - torch.diag(giou(src, tgt))).mean()

    def first_queries(pred_boxes, targets, indices, num_boxes):    # the first T_b queries, not the matched ones
        src = torch.cat([pred_boxes[b, :len(t["boxes"])] for b, t in enumerate(targets)])
        tgt = gathered(pred_boxes, targets, indices)[1]
        return (src - tgt).abs().sum() / num_boxes, box_losses(pred_boxes, targets, indices, num_boxes)[1]

    def smooth_l1(pred_boxes, targets, indices, num_boxes):
        loss_bbox = F.smooth_l1_loss(*gathered(pred_boxes, targets, indices), reduction="sum") / num_boxes
        return loss_bbox, box_losses(pred_boxes, targets, indices, num_boxes)[1]

    assert check_box_losses(lambda *a: list(box_losses(*a)))                          # a list is a pair too
    assert capsys.readouterr().out.startswith("OK:")
    for wrong, words in (
            (per_pair, "not by the number of matched pairs"), (giou_mean, "not by the number of matched pairs"),
            (first_queries, "not the first T_b queries"), (smooth_l1, "not smooth L1"),
            (lambda p, t, i, n: box_losses(p, t, i, 4 * n), "not the mean over the 4 * N coordinates"),
            (lambda p, t, i, n: (F.l1_loss(*gathered(p, t, i)), box_losses(p, t, i, n)[1]),
             "not the mean over the 4 * N coordinates"),
            (unpermuted, "in the matcher's order"), (l1_on_xyxy, "cxcywh boxes as given"),
            (squared, "not squared"), (weighted, "unweighted"), (all_pairs, "only the matched pairs"),
            (minus_giou, "not -GIoU"), (lambda *a: box_losses(*a)[::-1], "swapped"),
            (lambda *a: {"loss_bbox": box_losses(*a)[0]}, "pair of scalar Tensors")):
        assert not check_box_losses(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out

    def own_giou_on_cxcywh(pred_boxes, targets, indices, num_boxes):   # a learner's GIoU raises no error
        src, tgt = gathered(pred_boxes, targets, indices)
        loss_giou = (1 - torch.diag(giou(src, tgt))).sum() / num_boxes
        return box_losses(pred_boxes, targets, indices, num_boxes)[0], loss_giou

    assert not check_box_losses(own_giou_on_cxcywh)
    assert "convert both boxes to xyxy" in capsys.readouterr().out
