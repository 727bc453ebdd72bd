"""classification.py: DETR's softmax rule, the one object the head, matcher, criterion and PostProcess share."""

import torch
import torch.nn.functional as F

from detr_full.classification import SoftmaxClassification


def test_softmax_rule_by_hand():
    rule = SoftmaxClassification(eos_coef=0.25)
    assert rule.num_logits(3) == 4 and rule.loss_weight == 1.0
    assert rule.class_weights(3).tolist() == [1.0, 1.0, 1.0, 0.25]       # "no object" (index 3) down-weighted
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]]))   # (B=1, Q=2, K=4)
    torch.testing.assert_close(rule.cost(logits, torch.tensor([[2, 0]])),
                               -torch.tensor([[[0.3, 0.1], [0.1, 0.7]]]))   # -p of the target class
    scores, labels = rule.scores(logits)
    torch.testing.assert_close(scores, torch.tensor([[0.3, 0.7]]))       # "no object" is never a label
    assert labels.tolist() == [[2, 0]] and rule.is_object(logits).tolist() == [[False, True]]
    target = torch.tensor([[3, 0]])                                       # query 0 unmatched, query 1 class 0
    expected = -(0.25 * torch.log(torch.tensor(0.4)) + torch.log(torch.tensor(0.7))) / 1.25   # weighted mean
    torch.testing.assert_close(rule.loss(logits, target, 1.0, rule.class_weights(3)), expected)
    torch.testing.assert_close(rule.loss(logits, target, 1.0, None), F.cross_entropy(logits[0], target[0]))
