"""detr_full.data.collate: padding and the padding mask (True = padding)."""

import pytest
import torch

from detr_full.backbone import BackboneFeatures
from detr_full.data.collate import BackboneCollate, collate_fn, pad_images


def test_pad_images_matches_official_nested_tensor(golden):
    unit = golden["units"]["nested_tensor"]
    tensors, padding_mask = pad_images(unit["images"])
    assert tensors.dtype == unit["tensors"].dtype and padding_mask.dtype == torch.bool
    assert torch.equal(tensors, unit["tensors"])
    assert torch.equal(padding_mask, unit["mask"])


def test_padding_mask_polarity_and_zero_fill():
    a, b = torch.rand(3, 2, 3) + 1, torch.rand(3, 4, 1) + 1   # strictly positive, so zeros are padding
    tensors, padding_mask = pad_images([a, b])
    assert tensors.shape == (2, 3, 4, 3) and padding_mask.shape == (2, 4, 3)
    assert torch.equal(tensors[0, :, :2, :3], a) and torch.equal(tensors[1, :, :4, :1], b)
    expected = torch.tensor([[[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1]],
                             [[0, 1, 1], [0, 1, 1], [0, 1, 1], [0, 1, 1]]], dtype=torch.bool)
    assert torch.equal(padding_mask, expected)                 # True exactly where there is padding
    assert torch.equal(tensors == 0, padding_mask[:, None].expand_as(tensors))


def test_same_size_images_have_no_padding():
    tensors, padding_mask = pad_images([torch.rand(3, 5, 6) for _ in range(3)])
    assert tensors.shape == (3, 3, 5, 6) and not padding_mask.any()


def _target(labels, boxes, image_id=0):
    return {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": torch.tensor(boxes).reshape(-1, 4),
            "image_id": torch.tensor([image_id])}


def test_collate_fn_returns_images_mask_targets():
    batch = [(torch.rand(3, 4, 5), _target([1], [[.5, .5, .2, .2]])), (torch.rand(3, 6, 2), _target([], []))]
    images, padding_mask, targets = collate_fn(batch)
    assert images.shape == (2, 3, 6, 5) and padding_mask.shape == (2, 6, 5)
    assert isinstance(targets, list) and targets[0] is batch[0][1] and targets[1] is batch[1][1]


def test_collate_fn_checks_the_targets_on_the_host_naming_the_image():
    good = (torch.rand(3, 4, 5), _target([1], [[.5, .5, .2, .2]], image_id=7))
    with pytest.raises(ValueError, match=r"targets\[1\] \(image id 12\)\['boxes'\]\[0\].*negative width"):
        collate_fn([good, (torch.rand(3, 4, 5), _target([2], [[.5, .5, -.2, .2]], image_id=12))])
    with pytest.raises(ValueError, match=r"targets\[0\] \(image id 3\)\['labels'\] contains -1"):
        collate_fn([(torch.rand(3, 4, 5), _target([-1], [[.5, .5, .2, .2]], image_id=3)), good])
    with pytest.raises(ValueError, match="needs 'labels'"):
        collate_fn([(torch.rand(3, 4, 5), {"boxes": torch.zeros(0, 4)})])


def test_pad_images_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        pad_images([])
    with pytest.raises(ValueError, match="C, H, W"):
        pad_images([torch.rand(1, 3, 4, 4)])


def _tiny_detr(lr_backbone: float = 0.0):
    from detr_full.config import DETRConfig
    from detr_full.build import build_detr
    cfg = DETRConfig(backbone="resnet18", backbone_stride=16, hidden_dim=32, enc_layers=1, dec_layers=1,
                     dim_feedforward=64, nheads=2, num_queries=4, num_classes=3, lr_backbone=lr_backbone)
    return build_detr(cfg)[0].eval()


def test_backbone_collate_gives_detr_the_features_it_would_compute():
    model = _tiny_detr()
    batch = [(torch.randn(3, 40, 56), _target([1], [[.5, .5, .2, .2]])), (torch.randn(3, 64, 32), _target([], []))]
    images, padding_mask, targets = collate_fn(batch)
    features, pixel_mask, targets_b = BackboneCollate(model.backbone[0].run)(batch)
    assert isinstance(features, BackboneFeatures) and features.features.shape == (2, 256, 4, 4)
    assert torch.equal(pixel_mask, padding_mask) and targets_b == targets
    # nearest: feature cell (i, j) reads pixel (16 i, 14 j) of the 64x56 batch; the images are 40x56 and 64x32
    assert features.mask.shape == (2, 4, 4)
    assert features.mask[0, 3].all() and not features.mask[0, :3].any()
    assert features.mask[1, :, 3].all() and not features.mask[1, :, :3].any()
    with torch.no_grad():
        direct, ahead = model(images, padding_mask), model(features.to("cpu"), pixel_mask)
    assert torch.equal(direct["pred_logits"], ahead["pred_logits"])
    assert torch.equal(direct["pred_boxes"], ahead["pred_boxes"])
