"""COCO-format detection dataset: JSON + image folder -> (image, target dict) pairs.

Follows the official `datasets/coco.py` (`CocoDetection` + `ConvertCocoPolysToMask`): crowd
annotations are dropped, COCO `xywh` boxes become absolute `xyxy` clamped to the image, boxes with
no width or height are dropped, labels stay raw COCO category ids, images without objects are kept.
See `transforms.py` for the target dict contract.

Differences from the official code:
- the JSON is validated before pycocotools sees it; bad input raises `DatasetError` with one
  paragraph naming the file, the field and the fix (pycocotools fails with a KeyError or worse);
- dropped annotations are counted at load (`dataset.dropped`) and logged once, and so are the boxes
  clipped to their image (`dataset.clipped`; the official code clips them silently);
- negative-size boxes and boxes entirely outside their image are errors, not silently dropped;
- grayscale, RGBA, CMYK and palette images are converted to RGB on read;
- a missing "area" is filled with the bbox area (COCOeval needs it for small/medium/large).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import PIL.Image
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .transforms import make_coco_transforms

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
EXPECTED_LAYOUT = ("<coco_path>/train2017/ and <coco_path>/val2017/ (image files) plus "
                   "<coco_path>/annotations/instances_train2017.json and instances_val2017.json")
MAKE_SHAPES_HINT = "(`python -m detr_full.data.shapes --out data/shapes` writes a small synthetic set in this layout)"


class DatasetError(ValueError):
    """Bad dataset input. The message names the file, the offending field and how to fix it."""


# ----------------------------------------------------------------------------- JSON validation

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_annotation_json(ann_file: PathLike) -> dict[str, Any]:
    """Parse a COCO JSON file and check its top level; file errors become DatasetError."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(
            f"Annotation file {ann_file} does not exist. A COCO-style dataset needs {EXPECTED_LAYOUT}; "
            f"check coco_path {MAKE_SHAPES_HINT}.")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{ann_file} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
            "Fix the file there (a truncated download or a hand edit with a trailing comma are the "
            "usual causes) or regenerate it.") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{ann_file} is not UTF-8 text ({e.reason} at byte {e.start}); "
                           "a COCO annotation file must be UTF-8 JSON.") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: the top level is a {type(data).__name__}, but COCO annotations "
                           "are a JSON object with keys 'images', 'annotations' and 'categories'.")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(
            f"{ann_file}: missing top-level key(s) {missing} (found {sorted(data)}). COCO detection "
            "files need 'images', 'annotations' and 'categories' lists; an image set without objects "
            "still needs \"annotations\": [].")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{ann_file}: top-level '{key}' is a {type(data[key]).__name__}; "
                               "it must be a JSON list.")
    return data


def _validate_categories(data: dict[str, Any], ann_file: Path) -> set[int]:
    """Category ids must be unique ints; returns them."""
    string_ids = [c.get("id") for c in data["categories"] if isinstance(c, dict) and isinstance(c.get("id"), str)]
    if string_ids:
        raise DatasetError(
            f"{ann_file}: categories[].id must be integers, but these are strings: {string_ids[:10]}. "
            'Write "id": 1, not "id": "1" (labels are used as integer class indices).')
    ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
            raise DatasetError(
                f"{ann_file}: categories[{i}] = {cat!r} needs an integer 'id' and a 'name', "
                'e.g. {"id": 1, "name": "circle", "supercategory": "shape"}.')
        if cat["id"] in ids:
            raise DatasetError(f"{ann_file}: category id {cat['id']} appears twice in 'categories'; "
                               "ids must be unique.")
        if cat["id"] < 0:
            raise DatasetError(f"{ann_file}: category id {cat['id']} is negative; use ids >= 0 "
                               "(COCO uses 1..90).")
        ids.add(cat["id"])
    return ids


def _validate_images(data: dict[str, Any], ann_file: Path) -> dict[int, dict[str, Any]]:
    """Every image needs a unique int id, a file_name and a positive width/height; returns id -> image."""
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise DatasetError(f"{ann_file}: images[{i}] is a {type(img).__name__}, not an object.")
        name = f"images[{i}] (id {img.get('id')!r})"
        if not _is_int(img.get("id")):
            raise DatasetError(f"{ann_file}: {name} has no integer 'id'; image ids must be ints.")
        if not isinstance(img.get("file_name"), str):
            raise DatasetError(f"{ann_file}: {name} has no 'file_name' string; it names the image "
                               "file inside the image folder.")
        for key in ("width", "height"):
            if not _is_number(img.get(key)) or img[key] <= 0:
                raise DatasetError(f"{ann_file}: {name}, file {img['file_name']!r}, has {key} = "
                                   f"{img.get(key)!r}; it must be the image's positive {key} in pixels.")
        if img["id"] in images:
            raise DatasetError(f"{ann_file}: image id {img['id']} appears twice in 'images'; ids must be unique.")
        images[img["id"]] = img
    return images


def clamped_box_xyxy(bbox: list[float], width: float, height: float) -> tuple[float, float, float, float]:
    """COCO bbox [x, y, w, h] -> absolute xyxy clipped to the image (as ConvertCocoPolysToMask does)."""
    x, y, w, h = (float(v) for v in bbox)
    return (min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height))


def validate_coco(data: dict[str, Any], ann_file: PathLike) -> dict[str, int]:
    """Check a parsed COCO dict in place; fill defaults; return counts {"crowd", "degenerate", "clipped"}.

    Errors (DatasetError): string or unknown category ids, unknown image ids, malformed bbox,
    negative width/height, box entirely outside its image. Dropped (counted, as the official
    code does at load): iscrowd = 1, and zero-width or zero-height boxes ("degenerate"). Kept but
    counted: "clipped", boxes that run outside their image and are clipped to it at load.
    """
    ann_file = Path(ann_file)
    category_ids = _validate_categories(data, ann_file)
    images = _validate_images(data, ann_file)
    counts = {"crowd": 0, "degenerate": 0, "clipped": 0}
    seen_ids: set[Any] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{ann_file}: annotations[{i}] is a {type(ann).__name__}, not an object.")
        name = f"annotation id {ann['id']}" if "id" in ann else f"annotations[{i}] (no 'id')"
        if not _is_int(ann.get("id")):
            raise DatasetError(f"{ann_file}: {name} needs an integer 'id' (COCOeval matches "
                               "annotations by id).")
        if ann["id"] in seen_ids:
            raise DatasetError(f"{ann_file}: annotation id {ann['id']} appears twice; ids must be unique.")
        seen_ids.add(ann["id"])
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise DatasetError(f"{ann_file}: {name} has no '{key}' field; every annotation needs "
                                   "'image_id', 'category_id' and 'bbox' [x, y, width, height].")
        cat = ann["category_id"]
        if isinstance(cat, str):
            raise DatasetError(
                f"{ann_file}: {name} has category_id {cat!r}, a string. Category ids must be integers "
                f"matching categories[].id (known ids: {sorted(category_ids)[:20]}); write "
                '"category_id": 1, not "category_id": "1".')
        if not _is_int(cat) or cat not in category_ids:
            raise DatasetError(
                f"{ann_file}: {name} has category_id {cat!r}, which is not in 'categories' "
                f"(known ids: {sorted(category_ids)[:20]}). Add the category or fix the annotation.")
        if ann["image_id"] not in images:
            raise DatasetError(f"{ann_file}: {name} has image_id {ann['image_id']!r}, which is not in "
                               "'images'. Add the image entry or remove the annotation.")
        img = images[ann["image_id"]]
        where = f"{name} (image {img['file_name']!r}, id {img['id']})"
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DatasetError(f"{ann_file}: {where} has bbox {bbox!r}; a COCO bbox is a list of four "
                               "finite numbers [x, y, width, height] in pixels.")
        x, y, w, h = bbox
        if w < 0 or h < 0:
            raise DatasetError(
                f"{ann_file}: {where} has bbox {list(bbox)} with negative width or height. COCO bbox "
                "is [x, y, width, height] (not [x0, y0, x1, y1]); fix the box, e.g. convert xyxy with "
                "width = x1 - x0, height = y1 - y0.")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(w) * float(h))  # COCOeval reads area for small/medium/large
        if ann["iscrowd"]:
            counts["crowd"] += 1
            continue
        if w == 0 or h == 0:
            counts["degenerate"] += 1
            continue
        x0, y0, x1, y1 = clamped_box_xyxy(bbox, img["width"], img["height"])
        if x1 <= x0 or y1 <= y0:
            raise DatasetError(
                f"{ann_file}: {where} has bbox {list(bbox)} (x, y, width, height) entirely outside "
                f"the {img['width']}x{img['height']} image. Check the box coordinates and the image's "
                "width/height, or remove the annotation.")
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            counts["clipped"] += 1
    return counts


def make_coco_api(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object from an already parsed (and validated) dict, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def num_classes_from_annotations(ann_file: PathLike) -> int:
    """max category id + 1: the class head size before "no object" (91 for COCO 2017)."""
    data = read_annotation_json(ann_file)
    ids = _validate_categories(data, Path(ann_file))
    if not ids:
        raise DatasetError(f"{ann_file}: 'categories' is empty; list at least one category.")
    return max(ids) + 1


# ----------------------------------------------------------------------------- target conversion

def _segmentation_mask(segmentation: Any, height: int, width: int) -> Tensor:
    """COCO polygon list or RLE -> (H, W) uint8 mask."""
    if not segmentation:
        return torch.zeros((height, width), dtype=torch.uint8)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        rle = dict(segmentation, counts=segmentation["counts"].encode("ascii"))  # compressed RLE
    else:
        rle = coco_mask.frPyObjects(segmentation, height, width)
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 `copy=` DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = coco_mask.decode(rle)
    mask = torch.as_tensor(decoded, dtype=torch.uint8)
    if mask.dim() == 3:  # one channel per polygon: their union
        mask = mask.any(dim=2).to(torch.uint8)
    return mask


def convert_coco_annotations(annotations: list[dict[str, Any]], image_id: int, height: int, width: int,
                             return_masks: bool = False) -> dict[str, Tensor]:
    """One image's COCO annotations -> target dict (the official ConvertCocoPolysToMask).

    Drops iscrowd = 1, converts bbox xywh -> absolute xyxy clamped to (width, height), drops boxes
    with x1 <= x0 or y1 <= y0. boxes (N, 4) float32 xyxy, labels (N,) int64 category ids,
    area (N,) float32 from the JSON, iscrowd (N,) int64, masks (N, H, W) uint8 if return_masks,
    image_id (1,), orig_size = size = (h, w).
    """
    anns = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (N, 4) xywh
    boxes[:, 2:] += boxes[:, :2]                                                         # -> xyxy
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    target: dict[str, Tensor] = {
        "boxes": boxes[keep],
        "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)[keep],
    }
    if return_masks:
        masks = [_segmentation_mask(a.get("segmentation"), height, width) for a in anns]
        stacked = torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.uint8)
        target["masks"] = stacked[keep]
    target["image_id"] = torch.tensor([image_id])
    target["area"] = torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32)[keep]
    target["iscrowd"] = torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64)[keep]
    target["orig_size"] = torch.tensor([height, width])
    target["size"] = torch.tensor([height, width])
    return target


# ----------------------------------------------------------------------------- dataset

def load_rgb(path: Path) -> PIL.Image.Image:
    """Read an image file as RGB (grayscale, RGBA, CMYK, palette... converted)."""
    with PIL.Image.open(path) as image:
        image.load()
        if image.mode == "RGB":
            return image.copy()
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # avoids PIL's warning on transparent palettes
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16-bit / float grayscale: PIL's direct conversion clips at 255, so rescale first
            image = image.convert("F").point(lambda v: v / 256.0).convert("L")
        return image.convert("RGB")


class CocoDetection(Dataset):
    """COCO-format detection set: item i -> (image, target); see `transforms.py` for the target dict.

    Without `transforms` the image is a PIL RGB image and boxes are absolute xyxy. The JSON is
    validated at construction; `dropped` counts the crowd and zero-size annotations left out,
    `clipped` the boxes that ran outside their image and were clipped to it.
    """

    def __init__(self, img_folder: PathLike, ann_file: PathLike, transforms: Optional[Callable] = None,
                 return_masks: bool = False) -> None:
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.return_masks = return_masks
        data = read_annotation_json(self.ann_file)
        counts = validate_coco(data, self.ann_file)
        self.clipped = counts.pop("clipped")
        self.dropped = counts
        if not self.img_folder.is_dir():
            raise DatasetError(
                f"Image folder {self.img_folder} (for {self.ann_file}) does not exist. Expected "
                f"{EXPECTED_LAYOUT} {MAKE_SHAPES_HINT}.")
        self._check_files_exist(data["images"])
        self.coco = make_coco_api(data)
        self.ids = sorted(self.coco.imgs)
        if any(self.dropped.values()):
            log = logger.warning if self.dropped["degenerate"] else logger.info
            log("%s: %d images, %d annotations; dropped %d crowd and %d zero-size (degenerate) boxes",
                self.ann_file, len(self.ids), len(data["annotations"]),
                self.dropped["crowd"], self.dropped["degenerate"])
        if self.clipped:
            logger.warning("%s: %d of %d boxes run outside their image and were clipped to it", self.ann_file,
                           self.clipped, len(data["annotations"]))

    def _check_files_exist(self, images: list[dict[str, Any]]) -> None:
        listed = set(os.listdir(self.img_folder))  # one directory read instead of one stat per image
        missing = [img for img in images
                   if img["file_name"] not in listed and not (self.img_folder / img["file_name"]).is_file()]
        if missing:
            first = missing[0]
            raise DatasetError(
                f"Image file {self.img_folder / first['file_name']} (image id {first['id']}, listed in "
                f"{self.ann_file}) does not exist ({len(missing)} of {len(images)} listed files are "
                "missing). Check that coco_path points at the right folder and the images were fully "
                "extracted, or fix 'file_name' in the JSON.")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.img_folder / info["file_name"]
        try:
            image = load_rgb(path)
        except FileNotFoundError:
            raise DatasetError(f"Image file {path} (image id {image_id}, listed in {self.ann_file}) "
                               "does not exist; restore it or remove the image from the JSON.") from None
        except (PIL.UnidentifiedImageError, OSError, ValueError) as e:
            raise DatasetError(f"Image file {path} (image id {image_id}, listed in {self.ann_file}) "
                               f"cannot be read as an image ({e}). Re-download or regenerate it, or "
                               "remove the image from the JSON.") from None
        width, height = image.size  # PIL reports (w, h)
        if (width, height) != (info["width"], info["height"]):
            raise DatasetError(
                f"Image file {path} (image id {image_id}) is {width}x{height} pixels but {self.ann_file} "
                f"says width={info['width']}, height={info['height']}; the boxes would be wrong. Fix "
                "the JSON width/height (or the file).")
        target = convert_coco_annotations(self.coco.imgToAnns[image_id], image_id, height, width,
                                          self.return_masks)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def build_dataset(image_set: str, coco_path: PathLike, scales: Optional[list[int]] = None,
                  max_size: int = 1333, val_size: int = 800) -> CocoDetection:
    """COCO-layout split with the official transforms (see make_coco_transforms): "train" with the
    training augmentation; "val", or any other split of the folder (<split>2017/ and
    annotations/instances_<split>2017.json, e.g. the trees' "othersites"), with the val resize."""
    if not image_set.isidentifier():
        raise ValueError(f"build_dataset: image_set must be a split name such as 'train' or 'val', got {image_set!r}.")
    root = Path(coco_path)
    if not root.is_dir():
        raise DatasetError(f"coco_path {root} does not exist or is not a folder. Expected {EXPECTED_LAYOUT} "
                           f"{MAKE_SHAPES_HINT}.")
    transforms = make_coco_transforms("train" if image_set == "train" else "val", scales=scales, max_size=max_size,
                                      val_size=val_size)
    return CocoDetection(root / f"{image_set}2017", root / "annotations" / f"instances_{image_set}2017.json",
                         transforms=transforms)


def coco_api(dataset: Dataset) -> COCO:
    """The pycocotools COCO object behind a dataset, looking through torch Subsets (for COCOeval)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not hasattr(dataset, "coco"):
        raise TypeError(f"coco_api: {type(dataset).__name__} has no .coco; expected a CocoDetection "
                        "(possibly wrapped in torch.utils.data.Subset).")
    return dataset.coco


def category_names(dataset: Dataset) -> dict[int, str]:
    """{category id: name} of a dataset's annotations (looking through Subsets)."""
    return {int(c["id"]): str(c["name"]) for c in coco_api(dataset).dataset.get("categories", [])}


def num_classes_of(dataset: Dataset) -> int:
    """num_classes for a model trained on `dataset`: its largest category id + 1 (COCO: 91)."""
    inner = dataset
    while isinstance(inner, Subset):
        inner = inner.dataset
    ann_file = getattr(inner, "ann_file", None)
    if ann_file is not None:
        return num_classes_from_annotations(ann_file)
    return max(category_names(dataset), default=0) + 1
