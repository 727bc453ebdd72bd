"""The notebook 05 checkers: a correct solution passes, wrong ones fail with a hint, nothing raises."""

import torch
import torchvision
from scipy.optimize import linear_sum_assignment

from detr_full.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, giou_broadcast
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


# ----------------------------------------------------------------------------- likely wrong answers

def cost_with(pred_logits, pred_boxes, tgt_labels, tgt_boxes, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, *,
              mistake=None):
    """The cost matrix written as a learner would, with one mistake."""
    prob = {"raw logits": pred_logits, "softmax over queries": pred_logits.softmax(0), "sigmoid": pred_logits.sigmoid(),
            "softmax without no-object": pred_logits[:, :-1].softmax(-1)}.get(mistake, pred_logits.softmax(-1))
    class_cost = {"+prob": prob[:, tgt_labels], "1 - prob": 1 - prob[:, tgt_labels]}.get(mistake, -prob[:, tgt_labels])
    l1 = {"L2": torch.cdist(pred_boxes, tgt_boxes), "mean L1": torch.cdist(pred_boxes, tgt_boxes, p=1) / 4,
          "L1 on xyxy": torch.cdist(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes), p=1),
          }.get(mistake, torch.cdist(pred_boxes, tgt_boxes, p=1))
    giou = (generalized_box_iou(pred_boxes, tgt_boxes) if mistake == "GIoU on cxcywh" else
            generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes)))
    giou_cost = {"+GIoU": giou, "1 - GIoU": 1 - giou}.get(mistake, -giou)
    if mistake == "weights swapped":
        cost_bbox, cost_giou = cost_giou, cost_bbox
    if mistake == "weights ignored":
        cost_class, cost_bbox, cost_giou = 1.0, 5.0, 2.0
    return cost_class * class_cost + cost_bbox * l1 + cost_giou * giou_cost


def test_cost_matrix_checker_names_each_mistake(capsys):
    for wrong, words in (("raw logits", "softmax the logits first"), ("softmax over queries", "not over the queries"),
                         ("softmax without no-object", "no object\" included"), ("+prob", "minus the probability"),
                         ("sigmoid", "a sigmoid per class"),
                         ("1 - prob", "1 - prob gives the same matching"), ("L2", "Euclidean"),
                         ("mean L1", "don't average"), ("L1 on xyxy", "L1 cost is on the cxcywh boxes"),
                         ("GIoU on cxcywh", "before generalized_box_iou"), ("+GIoU", "minus the GIoU"),
                         ("1 - GIoU", "1 - GIoU gives the same matching"),
                         ("weights swapped", "with only cost_bbox = 1 you returned the GIoU term"),
                         ("weights ignored", "use the weights you are given")):
        assert not check_cost_matrix(lambda *a, **k: cost_with(*a, **k, mistake=wrong))
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong, out)
    assert check_cost_matrix(lambda *a, **k: cost_with(*a, **k))
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_cost_matrix(lambda *a, **k: cost_matrix(*a, **k, log_prob=True))
    assert "not the log-probability" in capsys.readouterr().out
    assert not check_cost_matrix(lambda *a, **k: cost_matrix(*a, **k).T)
    assert "transposed" in capsys.readouterr().out

    def own_giou_on_cxcywh(pred_logits, pred_boxes, tgt_labels, tgt_boxes, cost_class, cost_bbox, cost_giou):
        giou = giou_broadcast(pred_boxes[:, None], tgt_boxes[None])   # no validity check: no exception
        return (-cost_class * pred_logits.softmax(-1)[:, tgt_labels]
                + cost_bbox * torch.cdist(pred_boxes, tgt_boxes, p=1) - cost_giou * giou)

    assert not check_cost_matrix(own_giou_on_cxcywh)
    assert "before generalized_box_iou" in capsys.readouterr().out


def test_matcher_checker_names_each_mistake(capsys):
    assert check_matcher(matcher)
    assert capsys.readouterr().out.startswith("OK:")

    def numpy_indices(outputs, targets):
        return [(q.numpy(), t.numpy()) for q, t in matcher(outputs, targets)]

    def int32(outputs, targets):
        return [(q.int(), t.int()) for q, t in matcher(outputs, targets)]

    def float_empties(outputs, targets):
        return [(q, t) if len(q) else (torch.tensor([]), torch.tensor([])) for q, t in matcher(outputs, targets)]

    def sorted_by_target(outputs, targets):
        pairs = []
        for q, t in matcher(outputs, targets):
            order = t.argsort()
            pairs.append((q[order], t[order]))
        return pairs

    def maximised(outputs, targets):
        indices = []
        for logits, boxes, t in zip(outputs["pred_logits"], outputs["pred_boxes"], targets):
            rows, cols = linear_sum_assignment(cost_matrix(logits, boxes, t["labels"], t["boxes"]).numpy(),
                                               maximize=True)
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def batch_target_indices(outputs, targets):   # target indices counted along the concatenated targets
        offsets = torch.cumsum(torch.tensor([0] + [len(t["labels"]) for t in targets[:-1]]), 0)
        return [(q, t + offsets[b]) for b, (q, t) in enumerate(matcher(outputs, targets))]

    def whole_batch(outputs, targets):            # every image matched against all the batch's targets
        labels, boxes = torch.cat([t["labels"] for t in targets]), torch.cat([t["boxes"] for t in targets])
        indices = []
        for logits, pred_boxes in zip(outputs["pred_logits"], outputs["pred_boxes"]):
            rows, cols = linear_sum_assignment(cost_matrix(logits, pred_boxes, labels, boxes).numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def transposed(outputs, targets):
        return [(j, i) for i, j in matcher(outputs, targets)]

    def first_queries(outputs, targets):  # the first T queries in order: one-to-one but not optimal
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]

    for wrong, words in ((numpy_indices, "numpy arrays"), (int32, "int64"), (float_empties, "torch.empty(0"),
                         (sorted_by_target, "sort the pairs by query index"), (maximised, "highest total cost"),
                         (batch_target_indices, "within the image"), (whole_batch, "its own targets only"),
                         (transposed, "swapped"), (first_queries, "the optimum is")):
        assert not check_matcher(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, (wrong.__name__, out)


def matcher_on(cost_fn):
    """A Hungarian matcher that solves cost_fn(logits, boxes, labels, target boxes) per image."""
    def match(outputs, targets):
        indices = []
        for logits, boxes, t in zip(outputs["pred_logits"], outputs["pred_boxes"], targets):
            rows, cols = linear_sum_assignment(cost_fn(logits, boxes, t["labels"], t["boxes"]).numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
    return match


def test_matcher_checker_rejects_a_matching_on_another_cost(capsys):
    def iou_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes):       # IoU where the matcher uses GIoU
        iou = torchvision.ops.box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        return -pred_logits.softmax(-1)[:, tgt_labels] + 5 * torch.cdist(pred_boxes, tgt_boxes, p=1) - 2 * iou

    # 1 - prob and 1 - GIoU shift every entry by the same amount: the same matching, so right here.
    for right in (lambda *a: cost_with(*a, mistake="1 - prob"), lambda *a: cost_with(*a, mistake="1 - GIoU")):
        assert check_matcher(matcher_on(right))
        assert capsys.readouterr().out.startswith("OK:")
    for wrong in (iou_cost, lambda *a: cost_with(*a, mistake="softmax without no-object"),
                  lambda *a: cost_with(*a, mistake="raw logits"), lambda *a: cost_with(*a, mistake="L1 on xyxy"),
                  lambda *a: cost_with(*a, mistake="L2"), lambda *a: cost_matrix(*a, log_prob=True),
                  lambda *a: cost_matrix(*a, cost_giou=1.0), lambda *a: cost_matrix(*a, cost_class=2.0),
                  lambda *a: cost_matrix(*a, cost_bbox=2.0, cost_giou=5.0), lambda *a: cost_matrix(*a, cost_class=0.0)):
        assert not check_matcher(matcher_on(wrong))
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and "the optimum is" in out, out
