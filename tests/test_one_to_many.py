"""One-to-many matching: OneToManyMatcher (notebook 15's ablation) and proposal_copies (the encoder's
proposals matched one-to-many; the decoder's loss untouched)."""

import pytest
import torch

from detr_full.build import build_detr
from detr_full.config import ConfigError, DETRConfig
from detr_full.criterion import SetCriterion
from detr_full.matcher import HungarianMatcher
from detr_full.successors.one_to_many import OneToManyMatcher, repeat_targets


def _setup(copies):
    cfg = DETRConfig(backbone="resnet18", num_classes=5, hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2,
                     dim_feedforward=64, num_queries=4, backbone_stride=16, spatial_prior=True,
                     query_selection=True, proposal_copies=copies)
    torch.manual_seed(0)
    return build_detr(cfg)


def _targets():
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def test_repeat_targets_repeats_every_object_and_keeps_the_rest():
    targets = [{**t, "image_id": torch.tensor([i])} for i, t in enumerate(_targets())]
    repeated = repeat_targets(targets, 3)
    assert repeated[0]["labels"].tolist() == [1, 3, 1, 3, 1, 3]
    assert torch.equal(repeated[1]["boxes"], targets[1]["boxes"].repeat(3, 1))
    assert repeated[1]["image_id"] is targets[1]["image_id"]


def test_only_the_proposals_loss_changes_and_it_is_the_hungarian_loss_on_repeated_targets():
    images = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    model, one, _ = _setup(1)
    _, three, _ = _setup(3)
    with torch.no_grad():
        out = model(images, mask)
        l1, l3 = one(out, _targets()), three(out, _targets())
    for key in l1:
        if not key.endswith("_enc"):
            torch.testing.assert_close(l1[key], l3[key])                # the decoder's terms: untouched
    assert not torch.allclose(l1["loss_ce_enc"], l3["loss_ce_enc"])     # 3 positives per object now
    # by hand: SetCriterion's loss of the proposals on the targets repeated 3 times, 3 x the boxes
    enc = {k: v for k, v in out["enc_outputs"].items()}
    reference = SetCriterion(5, HungarianMatcher(1, 5, 2), {}, 0.1)
    repeated = repeat_targets(_targets(), 3)
    indices = reference.matcher(enc, repeated)
    assert [len(i) for i, _ in indices] == [6, 3]                       # up to 3 tokens per object
    by_hand = reference.layer_losses(enc, repeated, indices, num_boxes=9.0, with_class_error=False)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(l3[f"{key}_enc"], by_hand[key])


def test_proposal_copies_needs_query_selection():
    with pytest.raises(ConfigError, match="proposal_copies=2"):
        build_detr(DETRConfig(num_classes=5, spatial_prior=True, proposal_copies=2))
    with pytest.raises(ConfigError, match=">= 1"):
        build_detr(DETRConfig(num_classes=5, proposal_copies=0))


def test_the_one_to_many_matcher_gives_each_object_k_queries_through_both_interfaces():
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 2, 10, 6), torch.rand(2, 2, 10, 4) * 0.5 + 0.25    # (L, B, Q, K), (L, B, Q, 4)
    targets = _targets() + [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    logits, boxes = torch.cat([logits, logits[:, :1]], 1), torch.cat([boxes, boxes[:, :1]], 1)   # a third, empty image
    matcher = OneToManyMatcher(3, 1, 5, 2)
    matching = matcher.match_layers(logits, boxes, targets)
    for layer in range(2):
        per_image = matching.layer(layer).per_image(3)
        assert sorted(per_image[0][1].tolist()) == [0, 0, 0, 1, 1, 1] and len(set(per_image[0][0].tolist())) == 6
        assert per_image[1][1].tolist() == [0, 0, 0] and len(per_image[2][0]) == 0
        one_layer = matcher({"pred_logits": logits[layer], "pred_boxes": boxes[layer]}, targets)   # the official interface
        for (q, j), (q2, j2) in zip(per_image, one_layer):
            assert torch.equal(q, q2) and torch.equal(j, j2)
    assert sorted(HungarianMatcher(1, 5, 2).match_layers(logits, boxes, targets).layer(0).per_image(3)[0][1].tolist()) == [0, 1]


def test_the_criterion_trains_with_the_one_to_many_matcher():
    # the criterion matches through match_layers: a subclass that only changed `forward` would go unseen
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 10, 6), "pred_boxes": torch.rand(2, 10, 4) * 0.5 + 0.25}
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    one = SetCriterion(5, HungarianMatcher(1, 5, 2), weights, eos_coef=0.1)(outputs, _targets())
    many = SetCriterion(5, OneToManyMatcher(3, 1, 5, 2), weights, eos_coef=0.1)(outputs, _targets())
    assert one["cardinality_error"] == many["cardinality_error"]                  # no matching in it
    assert not torch.allclose(one["loss_bbox"], many["loss_bbox"])                # 3 boxes per object now
