"""detr_full.data.trees: tiles, the rule for cut crowns, the COCO layout from a wheel, clear errors."""

import io
import json
import zipfile

import PIL.Image
import pytest

from detr_full.data.coco import DatasetError, build_dataset
from detr_full.data.trees import (MIN_INSIDE, SPLITS, TILE, crowns_in_tile, ensure_trees, read_voc,
                                  tile_origins)


def test_train_tiles_cover_the_photo_every_200_px_and_val_tiles_never_overlap():
    assert tile_origins(2299, "train") == [0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 1899]
    assert tile_origins(1249, "val") == [0, 424, 849]                    # 3 fit; spread, 24 px apart
    assert tile_origins(1035, "val") == [0, 635]
    for size in (800, 1035, 1249, 2000):
        starts = tile_origins(size, "val")
        assert all(b - a >= TILE for a, b in zip(starts, starts[1:])) and starts[-1] + TILE == size
    assert tile_origins(400, "train") == tile_origins(400, "othersites") == [0]


def test_a_crown_cut_by_the_edge_is_kept_clipped_when_half_of_it_is_inside():
    inside = (10, 10, 50, 40)
    half = (380, 0, 420, 20)                 # exactly half of its width inside the tile at (0, 0)
    mostly_out = (390, 0, 430, 20)           # a quarter inside
    outside = (500, 500, 520, 520)
    assert crowns_in_tile([inside, half, mostly_out, outside], 0, 0) == [inside, (380, 0, 400, 20)]
    assert MIN_INSIDE == 0.5
    # in the neighbouring tile (x starting at 200) the boxes move by -200
    assert crowns_in_tile([half, mostly_out], 200, 0) == [(180, 0, 220, 20), (190, 0, 230, 20)]


def _voc(boxes, name="Tree"):
    objects = "".join(f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                      f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    return f"<annotation><filename>x.png</filename>{objects}</annotation>".encode()


def _fake_wheel(path, sizes):
    """A zip laid out like the deepforest wheel, with small photos: {name: (width, height)}."""
    with zipfile.ZipFile(path, "w") as wheel:
        for name, (w, h) in sizes.items():
            png = io.BytesIO()
            PIL.Image.new("RGB", (w, h), (40, 120, 40)).save(png, format="PNG")
            wheel.writestr(f"deepforest/data/{name}.png", png.getvalue())
            wheel.writestr(f"deepforest/data/{name}.xml", _voc([(5, 5, 35, 45), (w - 20, 10, w + 20, 30)],
                                                              "Dead" if name.startswith("SOAP") else "Tree"))
    return path


def test_read_voc_reads_every_object_whatever_its_label():
    assert read_voc(_voc([(1, 2, 3, 4), (5, 6, 7, 8)], "Alive")) == [(1, 2, 3, 4), (5, 6, 7, 8)]


def test_ensure_trees_writes_three_splits_in_coco_layout(tmp_path, capsys):
    sizes = {s.name: (900, 500) for split in ("train", "val") for s in SPLITS[split]}
    sizes.update({s.name: (400, 400) for s in SPLITS["othersites"]})
    wheel = _fake_wheel(tmp_path / "deepforest-2.1.0-py3-none-any.whl", sizes)
    root = ensure_trees(tmp_path / "trees", wheel)
    assert "othersites2017: 2 images" in capsys.readouterr().out           # the counts are printed
    data = {split: json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
            for split in ("train", "val", "othersites")}
    assert sorted(tuple(i["origin"]) for i in data["train"]["images"]) == \
        [(x, y) for x in (0, 200, 400, 500) for y in (0, 100)]             # every 200 px, then flush with the end
    assert len(data["val"]["images"]) == 2                      # 900 px: two tiles, 100 px apart
    assert [c["name"] for c in data["othersites"]["categories"]] == ["tree"]
    assert {a["category_id"] for split in data.values() for a in split["annotations"]} == {1}
    for split in data.values():
        for image in split["images"]:
            assert (image["width"], image["height"]) == (400, 400)
    dataset = build_dataset("othersites", root, val_size=400, max_size=512)     # any split: the val transforms
    image, target = dataset[0]
    assert image.shape[-2:] == (400, 400) and len(target["boxes"]) == 2
    assert ensure_trees(tmp_path / "trees", tmp_path / "no-such.whl") == root  # made once, then reused


def test_a_missing_or_wrong_wheel_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ensure_trees(tmp_path / "a", tmp_path / "missing.whl")
    wrong = _fake_wheel(tmp_path / "other.whl", {"something_else": (400, 400)})
    with pytest.raises(DatasetError, match="not the deepforest==2.1.0 wheel"):
        ensure_trees(tmp_path / "b", wrong)
    assert not (tmp_path / "b").exists()                         # nothing half-made left behind
