"""DETR data augmentation on (image, target) pairs, built on `torchvision.transforms.v2`.

Target dict contract (what `CocoDetection` returns and every transform here keeps):
    boxes     (N, 4) float   absolute xyxy pixels; normalised cxcywh after the final step
    labels    (N,)   int64   COCO category ids
    area      (N,)   float   COCO "area" (segment area), rescaled with the image
    iscrowd   (N,)   int64
    image_id  (1,)   int64
    orig_size (2,)   int64   (h, w) of the image as read from disk
    size      (2,)   int64   (h, w) after the transforms
    masks     (N, H, W) uint8, only with `CocoDetection(return_masks=True)`

Inside the pipeline `boxes` is a `tv_tensors.BoundingBoxes` (XYXY, absolute) and `masks` a
`tv_tensors.Mask`, so stock v2 transforms (the horizontal flip) move them with the image.
Every transform is called as `t(image, target)` and returns `(image, target)`; target may be None.

Differences from the official `datasets/transforms.py`:
- randomness comes from torch's generator (`torch.manual_seed`), not Python's `random`, so one seed
  fixes everything and DataLoader workers get distinct streams;
- `RandomSizeCrop` shrinks its lower bound to the image when the image is smaller than `min_size`
  (the official code raises);
- `make_coco_transforms` takes `scales`, and by default scales the crop branch with them
  (see its docstring), so small images can use the official recipe at a smaller resolution.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import PIL.Image
import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..box_ops import box_xyxy_to_cxcywh

Image = Union[PIL.Image.Image, Tensor]
Target = Optional[dict[str, Tensor]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_SCALES = list(range(480, 801, 32))  # 480, 512, ..., 800: training short sides
OFFICIAL_CROP_SIZES = (384, 600)             # RandomSizeCrop(min, max) in the crop branch
OFFICIAL_CROP_RESIZE = (400, 500, 600)       # short sides before that crop
# Fields indexed by box: a crop that drops a box drops the same row of each.
PER_BOX_FIELDS = ("boxes", "labels", "area", "iscrowd", "masks")


# ----------------------------------------------------------------------------- size rule

def get_size_with_aspect_ratio(image_size: tuple[int, int], size: int,
                               max_size: Optional[int] = None) -> tuple[int, int]:
    """Output (h, w) for an image of (h, w) whose shorter side goes to `size`, longer side <= `max_size`.

    Reproduces the official rule to the pixel, including its integer truncation of the long side
    and returning the input size untouched when the short side already equals `size`.
    """
    h, w = image_size
    if max_size is not None:
        short, long = float(min(h, w)), float(max(h, w))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def get_size(image_size: tuple[int, int], size: Union[int, Sequence[int]],
             max_size: Optional[int] = None) -> tuple[int, int]:
    """Output (h, w). `size` is a short side (int) or an explicit (w, h) pair, as in the official code."""
    if isinstance(size, (list, tuple)):
        w, h = size  # PIL order, kept for compatibility with the official API
        return int(h), int(w)
    return get_size_with_aspect_ratio(image_size, size, max_size)


def image_hw(image: Image) -> tuple[int, int]:
    """(h, w) of a PIL image or a (..., H, W) tensor."""
    h, w = F.get_size(image)
    return int(h), int(w)


# ----------------------------------------------------------------------------- functional ops

def _rewrap(new: Tensor, old: Tensor, canvas_size: tuple[int, int]) -> Tensor:
    """Give `new` the tv_tensor type of `old` (boxes need the new canvas size); plain stays plain."""
    if isinstance(old, tv_tensors.BoundingBoxes):
        return tv_tensors.wrap(new.as_subclass(Tensor), like=old, canvas_size=canvas_size)
    if isinstance(old, tv_tensors.Mask):
        return tv_tensors.Mask(new.as_subclass(Tensor))
    return new.as_subclass(Tensor)


def resize(image: Image, target: Target, size: Union[int, Sequence[int]],
           max_size: Optional[int] = None) -> tuple[Image, Target]:
    """Resize so the shorter side is `size` (longer <= `max_size`), or to an explicit (w, h).

    Boxes (xyxy, absolute) are scaled per axis, `area` by the product of both ratios, masks by
    nearest neighbour (> 0.5, as the official code does). Sets target["size"] = (h, w).
    """
    old_h, old_w = image_hw(image)
    new_h, new_w = get_size((old_h, old_w), size, max_size)
    image = F.resize(image, [new_h, new_w])
    if target is None:
        return image, None
    target = dict(target)
    ratio_w, ratio_h = new_w / old_w, new_h / old_h
    if "boxes" in target:
        boxes = target["boxes"]
        scaled = boxes.as_subclass(Tensor) * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h])
        target["boxes"] = _rewrap(scaled, boxes, (new_h, new_w))
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0] > 0:
            up = nnf.interpolate(masks.as_subclass(Tensor)[:, None].float(), size=(new_h, new_w),
                                 mode="nearest")[:, 0]                          # (N, new_h, new_w)
            new_masks = (up > 0.5).to(masks.dtype)
        else:
            new_masks = masks.as_subclass(Tensor).new_zeros((0, new_h, new_w))
        target["masks"] = _rewrap(new_masks, masks, (new_h, new_w))
    target["size"] = torch.tensor([new_h, new_w])
    return image, target


def crop(image: Image, target: Target, region: tuple[int, int, int, int]) -> tuple[Image, Target]:
    """Crop to region = (top, left, height, width).

    Boxes (xyxy, absolute) are shifted into the region and clipped to it, `area` is recomputed from
    the clipped boxes, and boxes left with zero width or height are dropped together with their
    labels/area/iscrowd/masks rows. Sets target["size"] = (height, width).
    """
    top, left, height, width = region
    image = F.crop(image, top, left, height, width)
    if target is None:
        return image, None
    target = dict(target)
    target["size"] = torch.tensor([height, width])
    keep = None
    if "boxes" in target:
        boxes = target["boxes"]
        shifted = boxes.as_subclass(Tensor) - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        corners = torch.min(shifted.reshape(-1, 2, 2),
                            torch.tensor([width, height], dtype=boxes.dtype)).clamp(min=0)  # (N, 2, 2)
        target["area"] = (corners[:, 1] - corners[:, 0]).prod(dim=1)
        target["boxes"] = _rewrap(corners.reshape(-1, 4), boxes, (height, width))
        keep = (corners[:, 1] > corners[:, 0]).all(dim=1)                        # (N,)
    if "masks" in target:
        masks = target["masks"]
        cropped = masks.as_subclass(Tensor)[:, top:top + height, left:left + width]
        target["masks"] = _rewrap(cropped, masks, (height, width))
        if keep is None:  # no boxes: a mask that lost all its pixels is dropped instead
            keep = cropped.flatten(1).any(dim=1)
    if keep is not None:
        for name in PER_BOX_FIELDS:
            if name in target:
                target[name] = _rewrap(target[name].as_subclass(Tensor)[keep], target[name],
                                       (height, width))
    return image, target


def hflip(image: Image, target: Target) -> tuple[Image, Target]:
    """Mirror left-right. Boxes (xyxy, absolute) become (w - x1, y0, w - x0, y1); masks flip too.

    Uses the same v2 kernels as `v2.RandomHorizontalFlip`, so the pipeline and this function agree.
    """
    h, w = image_hw(image)
    image = F.horizontal_flip(image)
    if target is None:
        return image, None
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        as_tv = tv_tensors.BoundingBoxes(boxes.as_subclass(Tensor), format="XYXY", canvas_size=(h, w))
        target["boxes"] = _rewrap(F.horizontal_flip(as_tv), boxes, (h, w))
    if "masks" in target:
        target["masks"] = _rewrap(target["masks"].as_subclass(Tensor).flip(-1), target["masks"], (h, w))
    return image, target


def normalize_boxes(target: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
    """Absolute xyxy boxes -> normalised cxcywh (divided by the image (h, w)), as plain tensors."""
    target = dict(target)
    if "boxes" in target:
        h, w = size
        boxes_cxcywh = box_xyxy_to_cxcywh(target["boxes"].as_subclass(Tensor))
        target["boxes"] = boxes_cxcywh / torch.tensor([w, h, w, h], dtype=boxes_cxcywh.dtype)
    return target


# ----------------------------------------------------------------------------- v2 transforms
# These override `forward` (as v2.SanitizeBoundingBoxes does) because they change several target
# fields together (area with boxes, dropped rows across fields), which v2's per-leaf
# `transform(inpt, params)` cannot express.

class ToTVTensors(v2.Transform):
    """Wrap target boxes as BoundingBoxes (XYXY, absolute) and masks as Mask, so v2 ops move them."""

    def forward(self, image: Image, target: Target = None) -> tuple[Image, Target]:
        if target is None:
            return image, None
        target = dict(target)
        if "boxes" in target and not isinstance(target["boxes"], tv_tensors.BoundingBoxes):
            target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                       canvas_size=image_hw(image))
        if "masks" in target and not isinstance(target["masks"], tv_tensors.Mask):
            target["masks"] = tv_tensors.Mask(target["masks"])
        return image, target


class RandomResize(v2.Transform):
    """Resize the shorter side to one of `sizes` (uniform), longer side <= `max_size` (official rule)."""

    def __init__(self, sizes: Sequence[int], max_size: Optional[int] = None) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.max_size = max_size

    def forward(self, image: Image, target: Target = None) -> tuple[Image, Target]:
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return resize(image, target, size, self.max_size)


class RandomSizeCrop(v2.Transform):
    """Crop a random region with width in [min_size, min(W, max_size)], height likewise, position uniform."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def forward(self, image: Image, target: Target = None) -> tuple[Image, Target]:
        img_h, img_w = image_hw(image)
        hi_w, hi_h = min(img_w, self.max_size), min(img_h, self.max_size)
        w = int(torch.randint(min(self.min_size, hi_w), hi_w + 1, ()))
        h = int(torch.randint(min(self.min_size, hi_h), hi_h + 1, ()))
        top = int(torch.randint(img_h - h + 1, ()))
        left = int(torch.randint(img_w - w + 1, ()))
        return crop(image, target, (top, left, h, w))


class NormalizeBoxes(v2.Transform):
    """Last step: boxes -> normalised cxcywh; image and target fields become plain tensors."""

    def forward(self, image: Image, target: Target = None) -> tuple[Tensor, Target]:
        image = image.as_subclass(Tensor) if isinstance(image, Tensor) else image
        if target is None:
            return image, None
        target = normalize_boxes(target, image_hw(image))
        return image, {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v
                       for k, v in target.items()}


def to_tensor_and_normalize() -> v2.Compose:
    """Official ToTensor + Normalize: float image in [0, 1], ImageNet mean/std, boxes to normalised cxcywh."""
    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),  # a plain dtype converts images only
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        NormalizeBoxes(),
    ])


def make_coco_transforms(image_set: str, scales: Optional[list[int]] = None, max_size: int = 1333,
                         val_size: int = 800, crop_sizes: Optional[tuple[int, int]] = None,
                         crop_resize: Optional[Sequence[int]] = None) -> v2.Compose:
    """The official DETR augmentation ("train") or evaluation resize ("val").

    train: hflip(0.5) -> one of, with probability 0.5 each,
             RandomResize(scales, max_size)
             RandomResize(crop_resize) -> RandomSizeCrop(*crop_sizes) -> RandomResize(scales, max_size)
           -> to tensor, ImageNet normalise, boxes to normalised cxcywh.
    val:   RandomResize([val_size], max_size) -> the same normalisation.

    `scales` None = official 480..800 step 32. `crop_sizes`/`crop_resize` None = the official
    (384, 600) and (400, 500, 600) multiplied by max(scales) / 800 (so exactly official for the
    official scales; e.g. scales [128, 160] give crop_resize (80, 100, 120), crop_sizes (77, 120)).
    Pass them explicitly to override. `max_size` is not scaled: pass e.g. 1333 * max(scales) // 800.
    Call the result as `transforms(pil_image, target)` -> (image (3, H, W) float, target).
    """
    scales = list(OFFICIAL_SCALES if scales is None else scales)
    factor = max(scales) / max(OFFICIAL_SCALES)
    if crop_sizes is None:
        crop_sizes = tuple(int(round(s * factor)) for s in OFFICIAL_CROP_SIZES)
    if crop_resize is None:
        crop_resize = [int(round(s * factor)) for s in OFFICIAL_CROP_RESIZE]
    if image_set == "train":
        return v2.Compose([
            ToTVTensors(),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomChoice([  # the official RandomSelect(t1, t2, p=0.5)
                RandomResize(scales, max_size=max_size),
                v2.Compose([
                    RandomResize(crop_resize),
                    RandomSizeCrop(*crop_sizes),
                    RandomResize(scales, max_size=max_size),
                ]),
            ], p=[0.5, 0.5]),
            to_tensor_and_normalize(),
        ])
    if image_set == "val":
        return v2.Compose([ToTVTensors(), RandomResize([val_size], max_size=max_size),
                           to_tensor_and_normalize()])
    raise ValueError(f"make_coco_transforms: unknown image_set {image_set!r}; use 'train' or 'val'.")

