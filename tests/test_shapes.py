"""detr_full.data.shapes: determinism, COCO layout, category ids, size spread, ensure_shapes reuse."""

import json
import threading
import warnings

import numpy as np
import pytest

from detr_full.data import shapes
from detr_full.data.coco import CocoDetection
from detr_full.data.prepared import maker_lock
from detr_full.data.shapes import SHAPES_CATEGORIES, ensure_shapes, make_shapes, render_image


def read_tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "s", num_train=24, num_val=6, seed=1)


def load(root, split):
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def test_same_seed_gives_identical_bytes(tmp_path, small_set):
    again = make_shapes(tmp_path / "again", num_train=24, num_val=6, seed=1)
    assert read_tree(again) == read_tree(small_set)
    other = make_shapes(tmp_path / "other", num_train=1, num_val=1, seed=4)
    assert read_tree(other)["train2017/000000000001.png"] != read_tree(small_set)["train2017/000000000001.png"]


def test_val_images_do_not_depend_on_num_train(tmp_path):
    a = read_tree(make_shapes(tmp_path / "a", num_train=1, num_val=3))
    b = read_tree(make_shapes(tmp_path / "b", num_train=4, num_val=3))
    assert {k: v for k, v in a.items() if k.startswith("val")} == {k: v for k, v in b.items() if k.startswith("val")}


def test_worker_processes_do_not_change_output(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "MIN_IMAGES_FOR_POOL", 0)
    parallel = read_tree(make_shapes(tmp_path / "p", num_train=6, num_val=2, workers=2))
    serial = read_tree(make_shapes(tmp_path / "s", num_train=6, num_val=2, workers=1))
    assert parallel == serial


def test_coco_layout_and_fields(small_set):
    for split, n in (("train", 24), ("val", 6)):
        data = load(small_set, split)
        assert len(data["images"]) == n
        assert sorted(p.name for p in (small_set / f"{split}2017").iterdir()) == sorted(
            img["file_name"] for img in data["images"])
        sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
        assert all(96 <= s <= 256 for wh in sizes.values() for s in wh)
        assert len({w / h for w, h in sizes.values()}) > 1                     # varied aspect ratios
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in data["annotations"]:
            assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            np.testing.assert_allclose([*poly.min(0), *(poly.max(0) - poly.min(0))], ann["bbox"], atol=0.011)
        assert data["categories"] == SHAPES_CATEGORIES
        assert all(set(c) == {"id", "name", "supercategory"} for c in data["categories"])


def test_loads_as_coco_detection(small_set):
    ds = CocoDetection(small_set / "val2017", small_set / "annotations" / "instances_val2017.json")
    assert ds.dropped == {"crowd": 0, "degenerate": 0}
    image, target = ds[0]
    assert image.size == tuple(target["orig_size"].tolist()[::-1])


def test_category_ids_are_non_contiguous(small_set):
    ids = [c["id"] for c in SHAPES_CATEGORIES]
    assert len(ids) >= 5 and len(set(c["name"] for c in SHAPES_CATEGORIES)) == len(ids)
    assert ids != list(range(ids[0], ids[0] + len(ids)))
    used = {a["category_id"] for a in load(small_set, "train")["annotations"]}
    assert used <= set(ids) and len(used) >= 4


def test_sizes_span_coco_small_medium_large():
    areas, empty = [], 0
    for index in range(80):
        _, objects = render_image(np.random.default_rng([0, 0, index]), 12.0, 160.0)
        areas += [shapes._polygon_area(o["polygon"]) for o in objects]
        empty += not objects
    areas = np.array(areas)
    small, large = (areas < 32 ** 2).mean(), (areas >= 96 ** 2).mean()
    assert small > 0.2 and large > 0.05 and 1 - small - large > 0.2
    assert empty > 0


def test_some_images_have_no_objects(small_set):
    data = load(small_set, "train")                    # seed 1: images 2, 6 and 20 are empty
    with_objects = {a["image_id"] for a in data["annotations"]}
    assert len(with_objects) < len(data["images"])


def test_ensure_shapes_generates_once_then_reuses(tmp_path, monkeypatch):
    root = tmp_path / "data" / "shapes"
    assert ensure_shapes(root, num_train=2, num_val=1) == root
    marker = root / "annotations" / "instances_val2017.json"
    assert marker.is_file() and len(list((root / "train2017").iterdir())) == 2

    def fail(*args, **kwargs):
        raise AssertionError("must not regenerate")
    monkeypatch.setattr(shapes, "make_shapes", fail)
    assert ensure_shapes(root) == root
    with pytest.warns(UserWarning, match="other settings"):
        ensure_shapes(root, num_train=5)
    left = sorted(p.name for p in tmp_path.joinpath("data").iterdir())
    assert left == [".shapes.lock", "shapes"]                            # no temp folder left, only the lock


def test_a_second_caller_waits_for_the_first_maker_then_reuses_its_set(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    make = shapes.make_shapes

    def fail(*args, **kwargs):
        raise AssertionError("the second caller should have reused the first one's data set")

    monkeypatch.setattr(shapes, "make_shapes", fail)
    result = {}
    with maker_lock(root):                                                 # the first maker, mid-generation
        second = threading.Thread(target=lambda: result.setdefault("root", ensure_shapes(root)))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive()                                           # waiting, not generating
        make(root, num_train=2, num_val=1, workers=1)
    second.join(timeout=30)
    assert result["root"] == root


def test_a_dataset_from_other_object_sizes_is_reported_not_reused_silently(tmp_path):
    root = ensure_shapes(tmp_path / "shapes", num_train=2, num_val=1, min_size=12.0)
    with pytest.warns(UserWarning, match="min_size"):
        ensure_shapes(root)                                  # the default sizes differ from the stored ones
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ensure_shapes(root, min_size=12.0) == root    # asked for what is there: no warning


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(out_dir, split, params, workers):
        if split == "val":
            raise KeyboardInterrupt
        (out_dir / "train2017").mkdir(parents=True)
    monkeypatch.setattr(shapes, "_write_split", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(tmp_path / "shapes", num_train=1, num_val=1)
    assert [p.name for p in tmp_path.iterdir()] == [".shapes.lock"]          # no half-written set


def test_ensure_shapes_refuses_foreign_folder(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a finished data set"):
        ensure_shapes(tmp_path / "shapes", num_train=1, num_val=1)


def test_cli_prints_summary(tmp_path, capsys):
    shapes.main(["--out", str(tmp_path / "cli"), "--num_train", "3", "--num_val", "2", "--seed", "1"])
    out = capsys.readouterr().out
    assert "wrote" in out and "train2017: 3 images" in out and "val2017: 2 images" in out
    assert (tmp_path / "cli" / "annotations" / "instances_train2017.json").is_file()
