"""detr_full.successors.focal: the focal loss and cost by hand and against torchvision, the model's head, post-processing."""

import dataclasses
import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detr_full.build import build_detr
from detr_full.config import DETRConfig
from detr_full.matcher import HungarianMatcher
from detr_full.successors.focal import SigmoidFocal

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=4, num_classes=3, lr_backbone=0.0, dropout=0.0, focal_loss=True)
TARGETS = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.4, 0.2]])},
           {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]


def test_loss_by_hand():
    # one query, two classes, target class 0: logits 0 (p = 0.5) and log 3 (p = 0.75)
    logits = torch.tensor([[[0.0, math.log(3)]]])
    loss = SigmoidFocal(2, alpha=0.25).loss(logits, torch.tensor([[0]]), num_boxes=2)
    positive = 0.25 * 0.5 ** 2 * -math.log(0.5)                 # class 0 is the target, p = 0.5
    negative = 0.75 * 0.75 ** 2 * -math.log(0.25)               # class 1 is not, p = 0.75
    assert loss.item() == pytest.approx((positive + negative) / 2, rel=1e-6)


def test_loss_equals_torchvision_and_unmatched_queries_are_all_negatives():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4)
    target_classes = torch.tensor([[4, 1, 4, 4, 0], [3, 4, 4, 4, 4]])      # 4 = matched to nothing
    onehot = torch.zeros(2, 5, 4)
    onehot[0, 1, 1] = onehot[0, 4, 0] = onehot[1, 0, 3] = 1
    expected = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2, reduction="sum") / 3
    torch.testing.assert_close(SigmoidFocal(4).loss(logits, target_classes, 3), expected)


def test_cost_by_hand_and_a_confident_query_costs_less():
    focal = SigmoidFocal(2, alpha=0.25)
    logits = torch.tensor([[[0.0, 0.0], [math.log(9), 0.0]]])               # query 1: p(class 0) = 0.9
    cost = focal.cost(logits, torch.tensor([[0]]))                           # (1, 2, 1)
    p = 0.5
    by_hand = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p ** 2 * -math.log(1 - p)
    assert cost[0, 0, 0].item() == pytest.approx(by_hand, rel=1e-6)
    assert cost[0, 1, 0] < cost[0, 0, 0] < 0.2


def test_matcher_follows_the_focal_class_cost():
    boxes = torch.full((1, 2, 4), 0.5)                                       # both queries: the same box
    logits = torch.tensor([[[-4.0, 3.0], [3.0, -4.0]]])                      # query 0 says class 1
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]
    matcher = HungarianMatcher(1, 5, 2, classification=SigmoidFocal(2))
    (queries, _), = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert queries.tolist() == [0]


def test_head_starts_at_the_prior_and_every_option_keeps_the_output_format():
    model, criterion, postprocess = build_detr(TINY)
    assert model.class_embed.out_features == 3                               # no "no object" logit
    torch.testing.assert_close(model.class_embed.bias.sigmoid(), torch.full((3,), 0.01))
    plain = build_detr(dataclasses.replace(TINY, focal_loss=False))
    assert model.state_dict().keys() == plain[0].state_dict().keys()
    model.train()
    losses = criterion(model(torch.randn(2, 3, 64, 64)), TARGETS)
    plain_losses = plain[1](plain[0].train()(torch.randn(2, 3, 64, 64)), TARGETS)
    assert losses.keys() == plain_losses.keys()
    assert criterion.weight_dict["loss_ce"] == 2.0 and plain[1].weight_dict["loss_ce"] == 1.0
    results = postprocess(model.eval()(torch.randn(2, 3, 64, 64)), torch.tensor([[64, 80], [64, 64]]))
    assert [sorted(r) for r in results] == [["boxes", "labels", "scores"]] * 2
    assert results[0]["scores"].shape == (4,) and results[0]["labels"].max() < 3


def test_postprocess_scores_are_the_best_sigmoid_and_cardinality_counts_confident_queries():
    logits = torch.tensor([[[2.0, -1.0, 0.0], [-3.0, -2.0, -5.0]]])           # (1, 2, 3)
    _, _, postprocess = build_detr(TINY)
    result = postprocess({"pred_logits": logits, "pred_boxes": torch.full((1, 2, 4), 0.5)}, torch.tensor([[10, 10]]))
    torch.testing.assert_close(result[0]["scores"], torch.tensor([2.0, -2.0]).sigmoid())
    assert result[0]["labels"].tolist() == [0, 1]
    assert SigmoidFocal(3).is_object(logits).tolist() == [[True, False]]


def test_denoising_uses_the_focal_loss_too():
    cfg = dataclasses.replace(TINY, spatial_prior=True, dn_groups=2)
    model, criterion, _ = build_detr(cfg)
    torch.manual_seed(0)
    out = model.train()(torch.randn(2, 3, 64, 64), None, TARGETS)
    dn = out["dn_outputs"]
    losses = criterion(out, TARGETS)
    valid = dn["valid"]
    expected = SigmoidFocal(3).loss(dn["pred_logits"][-1][valid][None], dn["labels"][valid][None], valid.sum())
    torch.testing.assert_close(losses["loss_dn_ce"], expected)
