"""Data pipeline: COCO-format datasets, the official DETR augmentation, batching, synthetic shapes."""

from typing import Any

from .coco import (CocoDetection, DatasetError, build_dataset, coco_api, convert_coco_annotations,
                   num_classes_from_annotations)
from .collate import collate_fn, pad_images
from .transforms import (RandomResize, RandomSizeCrop, crop, get_size, get_size_with_aspect_ratio, hflip,
                         make_coco_transforms, normalize_boxes, resize, to_tensor_and_normalize)

_SHAPES_NAMES = ("SHAPES_CATEGORIES", "ensure_shapes", "make_shapes")


def __getattr__(name: str) -> Any:
    # `shapes` loads on first use: importing it here would make `python -m detr_full.data.shapes`
    # find the module already imported, and runpy warns about running it twice.
    if name in _SHAPES_NAMES:
        from . import shapes
        return getattr(shapes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CocoDetection", "DatasetError", "build_dataset", "coco_api", "convert_coco_annotations",
    "num_classes_from_annotations",
    "collate_fn", "pad_images",
    "SHAPES_CATEGORIES", "ensure_shapes", "make_shapes",
    "RandomResize", "RandomSizeCrop", "crop", "get_size", "get_size_with_aspect_ratio", "hflip",
    "make_coco_transforms", "normalize_boxes", "resize", "to_tensor_and_normalize",
]
