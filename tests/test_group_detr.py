"""detr_full.group_detr: query groups in training, plain DETR at inference."""

import dataclasses

import torch

from detr_full.build import build_detr
from detr_full.config import DETRConfig
from detr_full.criterion import SetCriterion
from detr_full.successors.criterion import SuccessorCriterion
from detr_full.successors.group_detr import group_attention_mask, split_groups

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=3, num_classes=7, lr_backbone=0.0, dropout=0.0, num_query_groups=2)
TARGETS = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
           {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]


def test_mask_by_hand():
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(group_attention_mask(2, 2), expected)


def test_groups_do_not_see_each_other_and_the_mask_is_what_stops_them():
    model = build_detr(TINY)[0].train()
    images = torch.randn(2, 3, 64, 64)
    before = model(images)["pred_boxes"][:, :3]                      # group 0
    with torch.no_grad():
        model.query_embed.weight[3:] += 1.0                          # change only group 1's queries
    after = model(images)["pred_boxes"][:, :3]
    torch.testing.assert_close(before, after)
    model.num_query_groups = 1                                       # the same queries, no mask: they mix
    with torch.no_grad():
        unmasked = model(images)["pred_boxes"][:, :3]
        model.query_embed.weight[3:] -= 1.0
        unmasked_before = model(images)["pred_boxes"][:, :3]
    assert not torch.allclose(unmasked, unmasked_before)


def test_training_decodes_every_group_inference_only_the_first():
    model = build_detr(TINY)[0]
    images = torch.randn(2, 3, 64, 64)
    assert model.query_embed.weight.shape == (6, 32)
    train_out = model.train()(images)
    assert train_out["pred_logits"].shape == (2, 6, 8) and train_out["aux_outputs"][0]["pred_boxes"].shape == (2, 6, 4)
    plain_cfg = dataclasses.replace(TINY, num_query_groups=1)
    plain = build_detr(plain_cfg)[0]
    state = model.state_dict()
    state["query_embed.weight"] = state["query_embed.weight"][:3]
    plain.load_state_dict(state)                                     # the first group is a plain DETR
    eval_out, plain_out = model.eval()(images), plain.eval()(images)
    assert set(eval_out) == set(plain_out)
    for k in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(eval_out[k], plain_out[k])


def test_state_dict_keys_are_the_official_ones():
    grouped = build_detr(TINY)[0].state_dict()
    plain = build_detr(dataclasses.replace(TINY, num_query_groups=1))[0].state_dict()
    assert list(grouped) == list(plain)
    assert [k for k in plain if grouped[k].shape != plain[k].shape] == ["query_embed.weight"]


def test_criterion_averages_groups_and_equals_set_criterion_on_one_group():
    _, criterion, _ = build_detr(TINY)
    assert isinstance(criterion, SuccessorCriterion)
    plain = SetCriterion(TINY.num_classes, criterion.matcher, criterion.weight_dict, TINY.eos_coef)
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 6, 8), "pred_boxes": torch.rand(2, 6, 4) * 0.5 + 0.25,
               "aux_outputs": [{"pred_logits": torch.randn(2, 6, 8), "pred_boxes": torch.rand(2, 6, 4) * 0.5 + 0.25}]}
    g0, g1 = split_groups(outputs, 3)
    assert g1["aux_outputs"][0]["pred_logits"].shape == (2, 3, 8)
    l0, l1, both = plain(g0, TARGETS), plain(g1, TARGETS), criterion(outputs, TARGETS)
    for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_giou_0"):
        torch.testing.assert_close(both[k], (l0[k] + l1[k]) / 2)
    assert both["class_error"] == l0["class_error"] and both["cardinality_error"] == l0["cardinality_error"]
    single = criterion(g0, TARGETS)                                  # eval-mode outputs: Q queries
    assert all(torch.equal(single[k], l0[k]) for k in l0)


def test_gradients_reach_every_group():
    model, criterion, _ = build_detr(TINY)
    losses = criterion(model.train()(torch.randn(2, 3, 64, 64)), TARGETS)
    criterion.total_loss(losses).backward()
    grad = model.query_embed.weight.grad                             # (6, 32)
    assert grad[:3].abs().sum() > 0 and grad[3:].abs().sum() > 0
