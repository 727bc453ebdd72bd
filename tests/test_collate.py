"""detr_full.data.collate: padding and the padding mask (True = padding)."""

import pytest
import torch

from detr_full.data.collate import collate_fn, pad_images


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


def test_collate_fn_returns_images_mask_targets():
    batch = [(torch.rand(3, 4, 5), {"labels": torch.tensor([1])}), (torch.rand(3, 6, 2), {"labels": torch.tensor([])})]
    images, padding_mask, targets = collate_fn(batch)
    assert images.shape == (2, 3, 6, 5) and padding_mask.shape == (2, 6, 5)
    assert isinstance(targets, list) and targets[0] is batch[0][1] and targets[1] is batch[1][1]


def test_pad_images_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        pad_images([])
    with pytest.raises(ValueError, match="C, H, W"):
        pad_images([torch.rand(1, 3, 4, 4)])
