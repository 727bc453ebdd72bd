"""detr_full.denoising: noise, the attention mask, the queries in the model, the denoising loss."""

import dataclasses

import pytest
import torch

from detr_full.build import build_detr
from detr_full.config import DETRConfig
from detr_full.successors.criterion import SuccessorCriterion
from detr_full.successors.denoising import Denoising, denoising_attention_mask, noise_boxes, noise_labels

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=4, num_classes=7, lr_backbone=0.0, dropout=0.0, spatial_prior=True, dn_groups=3)
TARGETS = [{"labels": torch.tensor([1, 6]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.4, 0.2]])},
           {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.6]])}]


def test_attention_mask_by_hand():
    # 2 groups of 2 denoising queries (d0 d1 | d2 d3), then 2 matching queries (m0 m1)
    expected = torch.tensor([[1, 1, 0, 0, 1, 1],
                             [1, 1, 0, 0, 1, 1],
                             [0, 0, 1, 1, 1, 1],
                             [0, 0, 1, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1],    # matching queries never see a denoising query
                             [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(denoising_attention_mask(2, 2, 2), expected)


def test_box_noise_stays_within_its_bounds():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).expand(10000, -1)
    assert torch.equal(noise_boxes(boxes, 0.0), boxes)
    noised = noise_boxes(boxes, 0.4)
    assert ((noised[:, 0] - 0.5).abs() <= 0.4 * 0.1 + 1e-6).all()          # centre: up to scale * w / 2
    assert ((noised[:, 1] - 0.5).abs() <= 0.4 * 0.2 + 1e-6).all()
    ratio = noised[:, 2:] / boxes[:, 2:]
    assert (ratio >= 0.6 - 1e-6).all() and (ratio <= 1.4 + 1e-6).all()     # size: x (1 +- scale)
    assert ratio.min() < 0.62 and ratio.max() > 1.38                         # and it uses the whole range
    assert ((noise_boxes(torch.tensor([[0.99, 0.01, 0.5, 0.5]]).expand(100, -1), 0.4) - 0.5).abs() <= 0.5).all()


def test_label_noise_flips_the_given_fraction():
    torch.manual_seed(0)
    labels = torch.full((20000,), 3)
    assert torch.equal(noise_labels(labels, 7, 0.0), labels)
    noised = noise_labels(labels, 7, 0.5)
    assert noised.min() >= 0 and noised.max() < 7
    changed = (noised != 3).float().mean().item()
    assert abs(changed - 0.5 * 6 / 7) < 0.02                                  # a flip to 3 changes nothing


def test_queries_repeat_the_targets_per_group_with_padding():
    torch.manual_seed(0)
    dn = Denoising(num_classes=7, d_model=32, num_groups=3, label_noise=0.0, box_noise=0.0)(TARGETS)
    assert dn.labels.shape == (2, 6) and dn.group_size == 2 and dn.content.shape == dn.position.shape == (2, 6, 32)
    assert dn.labels[0].tolist() == [1, 6] * 3 and dn.labels[1, ::2].tolist() == [2] * 3
    assert dn.valid.tolist() == [[True] * 6, [True, False] * 3]               # image 1 has one object
    torch.testing.assert_close(dn.boxes[dn.valid], dn.target_boxes[dn.valid])  # no noise asked for


def test_matching_queries_never_see_the_denoising_queries():
    torch.manual_seed(0)
    model = build_detr(TINY)[0].train()
    images = torch.randn(2, 3, 64, 64)
    with_dn = model(images, targets=TARGETS)
    other = [{"labels": t["labels"].flip(0), "boxes": t["boxes"].flip(0) * 0.5} for t in TARGETS]
    with_other_dn = model(images, targets=other)
    without_dn = model(images)
    assert "dn_outputs" in with_dn and "dn_outputs" not in without_dn
    torch.testing.assert_close(with_dn["pred_logits"], without_dn["pred_logits"])
    torch.testing.assert_close(with_other_dn["pred_boxes"], without_dn["pred_boxes"])
    # the mask is what keeps them apart: without it the ground truth leaks into the matching queries
    model.transformer.decoder.layers[0].self_attn.forward = _ignore_mask(model.transformer.decoder.layers[0].self_attn)
    assert not torch.allclose(model(images, targets=TARGETS)["pred_logits"], without_dn["pred_logits"])


def _ignore_mask(attention):
    forward = attention.forward
    return lambda *args, allowed=None, **kwargs: forward(*args, **kwargs)


def test_inference_is_spatial_prior_detr_and_only_denoising_tensors_are_added():
    torch.manual_seed(0)
    model = build_detr(TINY)[0].eval()
    plain = build_detr(dataclasses.replace(TINY, dn_groups=0))[0].eval()
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(model.state_dict()) and extra and all(k.startswith("denoising.") for k in extra)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in extra})
    images = torch.randn(1, 3, 64, 64)
    out = model(images, targets=TARGETS)                                       # eval: targets are ignored
    assert set(out) == set(plain(images))
    torch.testing.assert_close(out["pred_boxes"], plain(images)["pred_boxes"])


def test_denoising_loss_by_hand():
    criterion = build_detr(dataclasses.replace(TINY, aux_loss=False))[1]
    assert isinstance(criterion, SuccessorCriterion)
    assert {k: criterion.weight_dict[k] for k in ("loss_dn_ce", "loss_dn_bbox", "loss_dn_giou")} == \
        {"loss_dn_ce": 1.0, "loss_dn_bbox": 5.0, "loss_dn_giou": 2.0}
    true_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])   # (B=1, N=2, 4)
    pred_boxes = torch.tensor([[[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]])   # slot 1 is padding
    logits = torch.full((1, 1, 2, 8), -10.0)                                     # (layers, B, N, K)
    logits[0, 0, 0, 2] = 10.0                                                    # slot 0: class 2, confidently
    matched = {"pred_logits": torch.zeros(1, 4, 8), "pred_boxes": torch.full((1, 4, 4), 0.5)}
    outputs = {**matched, "dn_outputs": {"pred_logits": logits, "pred_boxes": pred_boxes[None],
                                         "labels": torch.tensor([[2, 0]]), "boxes": true_boxes,
                                         "valid": torch.tensor([[True, False]])}}
    targets = [{"labels": torch.tensor([2]), "boxes": true_boxes[0, :1]}]
    losses = criterion(outputs, targets)
    torch.testing.assert_close(losses["loss_dn_bbox"], torch.tensor(0.1))        # |0.6 - 0.5|, one real slot
    # boxes 0.4..0.6 and 0.5..0.7 in x, the same in y: IoU = 0.02 / 0.06, the enclosing box is the union
    torch.testing.assert_close(losses["loss_dn_giou"], torch.tensor(1 - 1 / 3))
    assert losses["loss_dn_ce"] < 1e-6
    without = criterion({k: v for k, v in outputs.items() if k != "dn_outputs"}, targets)
    assert not any(k.startswith("loss_dn") for k in without)                    # eval outputs: plain DETR's terms
    assert all(torch.equal(without[k], losses[k]) for k in without)


def test_config_without_the_spatial_prior_is_refused():
    with pytest.raises(ValueError, match="spatial_prior=False: turn on spatial_prior"):
        build_detr(dataclasses.replace(TINY, spatial_prior=False))
