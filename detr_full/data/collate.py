"""Batching images of different sizes: zero-pad bottom/right and say where the padding is.

Replaces the official `NestedTensor` / `nested_tensor_from_tensor_list` with two plain tensors.
The mask's polarity is the one `nn.MultiheadAttention(key_padding_mask=...)` expects: True = padding.
`BackboneCollate` also runs a frozen ResNet on the padded batch, in the loader's workers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from detr_full.targets import check_targets


def pad_images(images: Sequence[Tensor], pad_to: int = 1) -> tuple[Tensor, Tensor]:
    """Stack (3, H_i, W_i) images into one zero-padded batch.

    Returns tensors (B, 3, Hmax, Wmax), image i in [:, :H_i, :W_i], and padding_mask (B, Hmax, Wmax)
    bool, True on padding. Same values as the official `nested_tensor_from_tensor_list`. `pad_to` > 1
    rounds Hmax and Wmax up to a multiple of it: fewer distinct batch shapes (cuda_graphs.py).
    """
    if len(images) == 0:
        raise ValueError("pad_images: got an empty list of images; a batch needs at least one image.")
    if any(img.dim() != 3 for img in images):
        shapes = [tuple(img.shape) for img in images]
        raise ValueError(f"pad_images: expected (C, H, W) images, got shapes {shapes}.")
    channels = images[0].shape[0]
    h_max = -(-max(img.shape[1] for img in images) // pad_to) * pad_to
    w_max = -(-max(img.shape[2] for img in images) // pad_to) * pad_to
    first = images[0]
    tensors = first.new_zeros((len(images), channels, h_max, w_max))                 # (B, C, Hmax, Wmax)
    padding_mask = torch.ones((len(images), h_max, w_max), dtype=torch.bool, device=first.device)
    for i, img in enumerate(images):
        _, h, w = img.shape
        tensors[i, :, :h, :w].copy_(img)
        padding_mask[i, :h, :w] = False
    return tensors, padding_mask


def collate_fn(batch: Sequence[tuple[Tensor, dict[str, Any]]], pad_to: int = 1
               ) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """DataLoader collate: [(image (3, H, W), target)] -> (images (B, 3, H, W), padding_mask (B, H, W), targets).

    padding_mask is True on padding; targets stay a list because images hold different numbers of boxes.
    The targets are checked here, on the host (targets.py), so that training need not read them back.
    `pad_to`: see pad_images.
    """
    images, targets = zip(*batch)
    tensors, padding_mask = pad_images(images, pad_to)
    if targets[0] is not None:
        check_targets(list(targets))
    return tensors, padding_mask, list(targets)


class BackboneCollate:
    """`collate_fn`, then a frozen backbone on the padded batch, in the loader's worker process.

    The batch's images are replaced by what `features(images, padding_mask)` returns: the features
    DETR's backbone would compute from them (`Backbone.run`, which the run setup hands over once it
    has checked that training cannot change the backbone: run_setup.py). With `num_workers >= 1` the
    workers compute the next batches' features while the main process trains on this one: on a
    2-core CPU the two halves of a step run side by side (`TrainConfig.backbone_in_loader`).
    """

    def __init__(self, features: Callable[[Tensor, Tensor], Any], pad_to: int = 1):
        self.features, self.pad_to = features, pad_to

    def __call__(self, batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Any, Tensor, list[dict[str, Any]]]:
        images, padding_mask, targets = collate_fn(batch, self.pad_to)   # (B, 3, H, W), (B, H, W)
        with torch.no_grad():
            features = self.features(images, padding_mask)  # e.g. BackboneFeatures: (B, C, h, w), (B, h, w), ...
        return features, padding_mask, targets
