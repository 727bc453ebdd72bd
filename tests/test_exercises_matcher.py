"""The notebook 05 checkers: a correct solution passes, wrong ones fail with a hint, nothing raises."""

import torch
from scipy.optimize import linear_sum_assignment

from detr_full.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr_full.exercises.matcher import check_cost_matrix, check_matcher


def cost_matrix(pred_logits, pred_boxes, tgt_labels, tgt_boxes, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0,
                log_prob=False):
    prob = pred_logits.log_softmax(-1) if log_prob else pred_logits.softmax(-1)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
    return (-cost_class * prob[:, tgt_labels] + cost_bbox * torch.cdist(pred_boxes, tgt_boxes, p=1)
            - cost_giou * giou)


def matcher(outputs, targets, greedy=False):
    indices = []
    for logits, boxes, t in zip(outputs["pred_logits"], outputs["pred_boxes"], targets):
        if len(t["labels"]) == 0:
            indices.append((torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)))
            continue
        cost = cost_matrix(logits, boxes, t["labels"], t["boxes"])
        if greedy:  # each target takes its cheapest query: may reuse a query, and is not optimal
            rows, cols = cost.argmin(0).sort()  # (query of each target, sorted), (the targets' order)
        else:
            rows, cols = linear_sum_assignment(cost.numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices


def test_cost_matrix_checker(capsys):
    assert check_cost_matrix(cost_matrix)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_cost_matrix(lambda *a, **k: cost_matrix(*a, **k, log_prob=True))
    assert "class cost" in capsys.readouterr().out
    assert not check_cost_matrix(lambda l, b, tl, tb, **k: cost_matrix(l, b, tl, box_cxcywh_to_xyxy(tb), **k))
    assert "not yet" in capsys.readouterr().out


def test_matcher_checker(capsys):
    assert check_matcher(matcher)
    assert capsys.readouterr().out.startswith("OK:")


def test_matcher_checker_rejects_wrong_matchings(capsys):
    def transposed(outputs, targets):
        return [(j, i) for i, j in matcher(outputs, targets)]

    def suboptimal(outputs, targets):  # the first T queries in order: one-to-one but not optimal
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]

    for wrong in (transposed, suboptimal, lambda o, t: matcher(o, t, greedy=True)):
        assert check_matcher(wrong) is False
        assert capsys.readouterr().out.startswith("not yet:")


def test_checkers_never_raise_on_a_stub(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    for check in (check_cost_matrix, check_matcher):
        assert check(stub) is False
        assert "NotImplementedError" in capsys.readouterr().out
    assert check_matcher(lambda o, t: None) is False
    assert check_cost_matrix(lambda *a, **k: 1 / 0) is False
    assert "ZeroDivisionError" in capsys.readouterr().out
