"""detr_full.data.coco on tiny COCO folders written to tmp_path: loading, dropping, and clear errors."""

import copy
import json
import logging

import PIL.Image
import pytest
import torch
from torch.utils.data import Subset

from detr_full.data.coco import (CocoDetection, DatasetError, build_dataset, coco_api,
                                 num_classes_from_annotations)

CATEGORIES = [{"id": 1, "name": "circle", "supercategory": "shape"},
              {"id": 7, "name": "star", "supercategory": "shape"}]


def base_dataset() -> dict:
    """Three images: one with objects (incl. a crowd and a zero-size box), one partly off-image box, one empty."""
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
                   {"id": 5, "file_name": "empty.png", "width": 16, "height": 24}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 50.0, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 30], "area": 1200.0, "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4], "area": 0.0, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [15, -2, 10, 6], "area": 60.0, "iscrowd": 0,
             "segmentation": [[15, 0, 20, 0, 20, 4, 15, 4]]},
        ],
        "categories": CATEGORIES,
    }


def write_coco(root, data, split="train", modes=None):
    """COCO layout under root: {split}2017/ images (PIL mode per file) + annotations JSON. Returns (img_dir, ann)."""
    img_dir, ann_dir = root / f"{split}2017", root / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(exist_ok=True)
    modes = modes or {}
    for img in data["images"]:
        mode = modes.get(img["file_name"], "RGB")
        PIL.Image.new(mode, (img["width"], img["height"])).save(img_dir / img["file_name"])
    ann_file = ann_dir / f"instances_{split}2017.json"
    ann_file.write_text(json.dumps(data))
    return img_dir, ann_file


@pytest.fixture
def tiny(tmp_path):
    return write_coco(tmp_path, base_dataset())


def test_loads_targets(tiny, capsys):
    ds = CocoDetection(*tiny)
    assert capsys.readouterr().out == ""            # pycocotools' "creating index..." is silenced
    assert len(ds) == 3 and ds.ids == [1, 2, 5]
    image, target = ds[0]
    assert image.mode == "RGB" and image.size == (40, 30)
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0]]))  # xywh -> xyxy
    assert torch.equal(target["labels"], torch.tensor([7]))                              # raw category id
    assert torch.equal(target["image_id"], torch.tensor([1]))
    assert torch.equal(target["orig_size"], torch.tensor([30, 40]))                     # (h, w)
    assert torch.equal(target["size"], torch.tensor([30, 40]))
    assert target["area"].dtype == torch.float32 and target["iscrowd"].dtype == torch.int64
    _, target = ds[1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[15.0, 0.0, 20.0, 4.0]]))  # clamped to the image


def test_crowd_and_degenerate_dropped_and_counted(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="detr_full.data.coco"):
        ds = CocoDetection(*tiny)
    assert ds.dropped == {"crowd": 1, "degenerate": 1}
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    assert len(ds[0][1]["boxes"]) == 1
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1  # once, at load


def test_boxes_outside_the_image_are_clipped_and_counted(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="detr_full.data.coco"):
        ds = CocoDetection(*tiny)
    assert ds.clipped == 1                                   # annotation 13 starts at y = -2; the rest fit
    messages = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(messages) == 1 and "1 of 4 boxes" in messages[0]


def test_boxes_inside_the_image_are_not_reported_as_clipped(tmp_path, caplog):
    data = base_dataset()
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 13]
    with caplog.at_level(logging.WARNING, logger="detr_full.data.coco"):
        ds = CocoDetection(*write_coco(tmp_path, data))
    assert ds.clipped == 0 and not [r for r in caplog.records if "clipped" in r.getMessage()]


def test_zero_object_image_is_kept(tiny):
    ds = CocoDetection(*tiny)
    _, target = ds[2]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_non_rgb_images_are_converted(tmp_path, mode):
    data = base_dataset()
    name = "a.jpg" if mode == "CMYK" else "a.png"            # PNG cannot store CMYK
    data["images"][0]["file_name"] = name
    ds = CocoDetection(*write_coco(tmp_path, data, modes={name: mode}))
    image, _ = ds[0]
    assert image.mode == "RGB" and image.size == (40, 30)


def test_return_masks(tiny):
    _, target = CocoDetection(*tiny, return_masks=True)[0]
    assert target["masks"].shape == (1, 30, 40) and target["masks"].dtype == torch.uint8
    assert target["masks"].sum() == 50                    # the 10 x 5 polygon


def test_build_dataset_with_transforms_and_coco_api(tmp_path):
    write_coco(tmp_path, base_dataset(), "train")
    write_coco(tmp_path, base_dataset(), "val")
    ds = build_dataset("val", tmp_path, val_size=48, max_size=100)
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.175, 0.1833, 0.25, 0.1667]]), atol=1e-4, rtol=0)
    assert coco_api(Subset(Subset(ds, [0, 1]), [0])) is ds.coco
    assert sorted(coco_api(ds).getCatIds()) == [1, 7]
    assert len(build_dataset("train", tmp_path, scales=[32])) == 3


def test_num_classes_from_annotations(tiny):
    assert num_classes_from_annotations(tiny[1]) == 8


# ----------------------------------------------------------------------------- bad input

def raises_clear(fn, *needles):
    """Call fn, expect a one-paragraph DatasetError mentioning every needle, without a chained traceback."""
    with pytest.raises(DatasetError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in: {message}"
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return message


def test_error_missing_coco_path(tmp_path):
    missing = tmp_path / "nowhere"
    raises_clear(lambda: build_dataset("train", missing), missing, "annotations/instances_train2017.json",
                 "train2017")


def test_error_missing_annotation_file(tmp_path):
    (tmp_path / "train2017").mkdir()
    raises_clear(lambda: build_dataset("train", tmp_path), "instances_train2017.json", "<coco_path>/annotations")


def test_error_missing_image_folder(tmp_path):
    _, ann_file = write_coco(tmp_path, base_dataset())
    raises_clear(lambda: CocoDetection(tmp_path / "val2017", ann_file), "val2017", "does not exist")


def test_error_invalid_json(tiny):
    img_dir, ann_file = tiny
    ann_file.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    raises_clear(lambda: CocoDetection(img_dir, ann_file), ann_file.name, "line 3", "column")


def test_error_missing_top_level_keys(tiny):
    img_dir, ann_file = tiny
    data = base_dataset()
    del data["categories"]
    ann_file.write_text(json.dumps(data))
    raises_clear(lambda: CocoDetection(img_dir, ann_file), ann_file.name, "'categories'")


def test_error_image_file_missing(tiny):
    img_dir, ann_file = tiny
    (img_dir / "b.png").unlink()
    raises_clear(lambda: CocoDetection(img_dir, ann_file), "b.png", "image id 2")


def test_error_image_file_unreadable(tiny):
    img_dir, ann_file = tiny
    ds = CocoDetection(img_dir, ann_file)
    (img_dir / "b.png").write_bytes(b"not an image")
    raises_clear(lambda: ds[1], "b.png", "image id 2", "cannot be read")


def test_error_image_size_differs_from_json(tiny):
    img_dir, ann_file = tiny
    PIL.Image.new("RGB", (41, 30)).save(img_dir / "a.png")
    raises_clear(lambda: CocoDetection(img_dir, ann_file)[0], "a.png", "width=40")


def _with(tiny, edit):
    img_dir, ann_file = tiny
    data = copy.deepcopy(base_dataset())
    edit(data)
    ann_file.write_text(json.dumps(data))
    return lambda: CocoDetection(img_dir, ann_file)


def test_error_negative_bbox(tiny):
    def edit(data):
        data["annotations"][0]["bbox"] = [12, 3, -10, 5]
    raises_clear(_with(tiny, edit), "instances_train2017.json", "annotation id 10", "a.png", "bbox",
                 "[12, 3, -10, 5]", "negative", "x1 - x0")


def test_error_bbox_outside_image(tiny):
    def edit(data):
        data["annotations"][3]["bbox"] = [25, 2, 5, 5]       # image b.png is 20 x 20
    raises_clear(_with(tiny, edit), "instances_train2017.json", "annotation id 13", "b.png", "[25, 2, 5, 5]",
                 "outside")


def test_error_unknown_category(tiny):
    def edit(data):
        data["annotations"][0]["category_id"] = 3
    raises_clear(_with(tiny, edit), "instances_train2017.json", "annotation id 10", "category_id", "categories")


def test_error_string_category_ids(tiny):
    def edit(data):
        data["categories"][1]["id"] = "7"
    raises_clear(_with(tiny, edit), "instances_train2017.json", "categories[].id", "'7'", "integers")


def test_error_string_category_id_in_annotation(tiny):
    def edit(data):
        data["annotations"][0]["category_id"] = "7"
    raises_clear(_with(tiny, edit), "instances_train2017.json", "annotation id 10", "category_id", "'7'",
                 "integers")


def test_error_annotation_missing_field(tiny):
    def edit(data):
        del data["annotations"][1]["bbox"]
    raises_clear(_with(tiny, edit), "instances_train2017.json", "annotation id 11", "'bbox'")


def test_error_unknown_image_id(tiny):
    def edit(data):
        data["annotations"][0]["image_id"] = 99
    raises_clear(_with(tiny, edit), "instances_train2017.json", "annotation id 10", "image_id 99")


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)
