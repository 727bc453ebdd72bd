"""Synthetic "shapes" detection dataset in COCO 2017 layout, small enough to train DETR on a CPU.

    <out>/train2017/000000000001.png ...     <out>/annotations/instances_train2017.json
    <out>/val2017/000000000001.png ...       <out>/annotations/instances_val2017.json

Five filled shapes with non-contiguous COCO-style category ids (so `num_classes = 19`, as COCO's
gaps make it 91). A shape's class is its geometry only: colours are random per object. Images are
96..256 px per side with random aspect ratio, a textured coloured background with speckles, and
clutter lines and arcs that are not objects; about 1 in 10 images has no object. Object sizes
(sqrt of area) are log-uniform in 24..160 px, spanning COCO's small (< 32^2 px area, about 15 %),
medium and large (>= 96^2).

Generation is deterministic: image i of a split depends only on (seed, split, i), so the same
seed gives byte-identical PNGs and JSON, and changing `num_train` leaves the val images alone.

    python -m detr_full.data.shapes --out data/shapes --num_train 2000 --num_val 200 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import PIL.Image
from PIL import ImageDraw

from detr_full.data.prepared import MARKER, build_once

PathLike = Union[str, os.PathLike]

SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 12, "name": "star", "supercategory": "shape"},
    {"id": 18, "name": "cross", "supercategory": "shape"},
]
def _default_root() -> Path:
    """`<repo>/data/shapes` in a source checkout (wherever the command or notebook runs from),
    else `data/shapes` under the current working directory."""
    repo = Path(__file__).resolve().parents[2]
    return repo / "data" / "shapes" if (repo / "pyproject.toml").is_file() else Path("data") / "shapes"


DEFAULT_ROOT = _default_root()
IMAGE_SIDE = (96, 256)           # each side uniform in this range, independently: aspect 0.375..2.7
EMPTY_FRACTION = 0.1             # images with no object at all
MAX_OBJECTS = 8
MAX_OVERLAP = 0.2                # intersection / smaller box area allowed between two objects
MIN_CONTRAST = 120               # summed |RGB difference| between an object and the background under it
SPLIT_CODE = {"train": 0, "val": 1}
MIN_IMAGES_FOR_POOL = 64         # below this, starting worker processes costs more than it saves
# Object sizes, sqrt(area) in px. 24 px is 1.5 feature cells at the stride-16 backbone of the CPU
# recipe: smaller objects (the first version went down to 12 px, 46 % of them COCO-small) kept a
# CPU-sized DETR near AP50 0.1 for its first 500 steps, 24 px and up reached 0.29 at 250
# (benchmarks/shapes_recipe.py, issue 7). About 15 % of the objects are still COCO-small.
MIN_SIZE, MAX_SIZE = 24.0, 160.0


# ----------------------------------------------------------------------------- shape outlines

def _regular(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)        # (n, 2)


def _unit_outline(name: str) -> np.ndarray:
    """Polygon of a shape centred at 0, fitting a circle of radius 0.5. (n, 2) xy."""
    if name == "circle":
        return _regular(40, 0.5)
    if name == "square":
        return _regular(4, 0.5, np.pi / 4)
    if name == "triangle":
        return _regular(3, 0.5, -np.pi / 2)
    if name == "star":  # inner radius 0.2: spiky enough not to be read as a pentagon
        outer, inner = _regular(5, 0.5, -np.pi / 2), _regular(5, 0.2, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(10, 2)
    if name == "cross":  # a plus sign with arms one third of its span wide
        a, b = 1 / 6, 0.5
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a],
                         [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]) / math.sqrt(a * a + b * b) * 0.5
    raise ValueError(name)


UNIT_OUTLINES = {c["name"]: _unit_outline(c["name"]) for c in SHAPES_CATEGORIES}
# Rotation range per shape (degrees). Squares and crosses stay near upright: rotated 45 degrees they
# would turn into a diamond and an "x", which are other shapes to a human eye.
MAX_ROTATION = {"circle": 0.0, "square": 15.0, "triangle": 180.0, "star": 180.0, "cross": 15.0}


def _polygon_area(xy: np.ndarray) -> float:
    """Shoelace formula, (n, 2) vertices -> area."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


UNIT_AREAS = {name: _polygon_area(xy) for name, xy in UNIT_OUTLINES.items()}


# ----------------------------------------------------------------------------- one image

def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Base colour + smooth low-frequency colour texture + sparse speckles. (h, w, 3) uint8."""
    base = rng.uniform(40, 215, size=3)
    grid = base + rng.uniform(-45, 45, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    # Bilinear upsampling of a tiny random grid gives gradients and blotches at almost no cost.
    coarse = PIL.Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8))
    background = np.array(coarse.resize((w, h), PIL.Image.BILINEAR))
    # Sparse speckles rather than per-pixel noise: dense noise made the PNGs 4x larger and the
    # generator 2x slower (zlib time), for no gain in what a detector has to learn.
    n = int(rng.integers(0, h * w // 200))
    background[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.integers(0, 256, (n, 3))
    return background


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Thin lines and open arcs: structure the detector must learn to ignore (never filled)."""
    for _ in range(int(rng.integers(0, 6))):
        pts = rng.uniform(0, 1, size=4) * [w, h, w, h]
        draw.line([float(p) for p in pts], fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = rng.uniform(0, 1) * w, rng.uniform(0, 1) * h
        r = rng.uniform(8, 40)
        start = rng.uniform(0, 360)
        draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start=start, end=start + rng.uniform(30, 200),
                 fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=1)


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """Random colour that stands out from the mean background colour `under` (3,)."""
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - under).sum() >= MIN_CONTRAST:
            return tuple(int(c) for c in colour)
    return tuple(0 if c >= 128 else 255 for c in under)  # fallback: the far end of every channel


def _overlaps(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]]) -> bool:
    """Does xyxy `box` cover more than MAX_OVERLAP of itself or of any box in `boxes`?"""
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in boxes:
        inter = max(0.0, min(x1, a1) - max(x0, a0)) * max(0.0, min(y1, b1) - max(y0, b0))
        smaller = min((x1 - x0) * (y1 - y0), (a1 - a0) * (b1 - b0))
        if inter > MAX_OVERLAP * smaller:
            return True
    return False


def render_image(rng: np.random.Generator, min_size: float, max_size: float
                 ) -> tuple[PIL.Image.Image, list[dict[str, Any]]]:
    """One random image and its objects [{category_id, polygon (n, 2) xy pixels}].

    An object's size is sqrt(its area), COCO's size measure, drawn log-uniform in
    [min_size, max_size], then shrunk if needed so the object fits in 90 % of the image.
    """
    w, h = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, size=2))
    background = _background(rng, h, w)                                        # (h, w, 3) uint8
    image = PIL.Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    _draw_clutter(draw, rng, h, w)

    num_objects = 0 if rng.uniform() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float, float]] = []
    cats = [SHAPES_CATEGORIES[int(i)] for i in rng.integers(len(SHAPES_CATEGORIES), size=num_objects)]
    sizes = np.exp(rng.uniform(math.log(min_size), math.log(max_size), size=num_objects))  # log-uniform
    # Largest first: a big object rarely finds room once small ones are scattered around.
    for size, cat in sorted(zip(sizes.tolist(), cats), key=lambda sc: -sc[0]):
        angle = math.radians(rng.uniform(-1, 1) * MAX_ROTATION[cat["name"]])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        outline = UNIT_OUTLINES[cat["name"]] @ rot.T * (size / math.sqrt(UNIT_AREAS[cat["name"]]))
        extent = outline.max(axis=0) - outline.min(axis=0)                     # (2,) bbox w, h
        outline *= min(1.0, 0.9 * w / extent[0], 0.9 * h / extent[1])
        lo, hi = outline.min(axis=0), outline.max(axis=0)
        for _try in range(10):  # rejection sampling of a position that keeps objects apart
            cx = rng.uniform(-lo[0], w - hi[0])
            cy = rng.uniform(-lo[1], h - hi[1])
            box = (cx + lo[0], cy + lo[1], cx + hi[0], cy + hi[1])
            if not _overlaps(box, placed):
                break
        else:
            continue
        polygon = np.clip(np.round(outline + [cx, cy], 2), 0, [w, h])
        x0, y0, x1, y1 = (int(v) for v in (box[0], box[1], math.ceil(box[2]), math.ceil(box[3])))
        under = background[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
        # PIL puts pixel i's centre at coordinate i, COCO at i + 0.5: shift so the fill matches the polygon.
        draw.polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in polygon], fill=_pick_colour(rng, under))
        placed.append(box)
        objects.append({"category_id": cat["id"], "polygon": polygon})
    return image, objects


# ----------------------------------------------------------------------------- writing

def _render_and_save(folder: Path, seed: int, split: str, indices: range, min_size: float,
                     max_size: float) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """Render images `indices` of a split, save their PNGs, return [(width, height, objects)]."""
    out = []
    for index in indices:
        # One generator per image: its pixels depend on (seed, split, index) only, whatever the
        # number of images or worker processes.
        image, objects = render_image(np.random.default_rng([seed, SPLIT_CODE[split], index]),
                                      min_size, max_size)
        image.save(folder / f"{index + 1:012d}.png", compress_level=1)  # fast, still deterministic
        out.append((image.width, image.height, objects))
    return out


def _render_split(folder: Path, split: str, params: dict[str, Any], workers: int
                  ) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """All images of a split, in index order, rendered by up to `workers` processes."""
    n = params[f"num_{split}"]
    render = functools.partial(_render_and_save, folder, params["seed"], split,
                               min_size=params["min_size"], max_size=params["max_size"])
    if workers <= 1 or n < MIN_IMAGES_FOR_POOL:
        return render(range(n))
    step = math.ceil(n / (4 * workers))  # a few chunks per worker evens out the load
    chunks = [range(i, min(i + step, n)) for i in range(0, n, step)]
    # fork: workers inherit the imported module instead of re-importing the package (and torch).
    context = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [item for part in pool.map(render, chunks) for item in part]


def _write_split(out_dir: Path, split: str, params: dict[str, Any], workers: int) -> None:
    folder = out_dir / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (width, height, objects) in enumerate(_render_split(folder, split, params, workers)):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{image_id:012d}.png", "width": width, "height": height})
        for obj in objects:
            poly = obj["polygon"]                                              # (n, 2) xy
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj["category_id"],
                "bbox": [round(float(x0), 2), round(float(y0), 2),
                         round(float(x1 - x0), 2), round(float(y1 - y0), 2)],   # COCO xywh
                "area": round(_polygon_area(poly), 2),
                "iscrowd": 0,
                "segmentation": [[float(v) for v in poly.reshape(-1)]],
            })
    data = {
        # The generator settings, so ensure_shapes can tell when a reused dataset differs.
        "info": {"description": "detr-course synthetic shapes", "generator": "detr_full.data.shapes",
                 "split": split, **params},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": SHAPES_CATEGORIES,
    }
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    with open(ann_dir / f"instances_{split}2017.json", "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def make_shapes(out_dir: PathLike, num_train: int = 2000, num_val: int = 200, seed: int = 0,
                min_size: float = MIN_SIZE, max_size: float = MAX_SIZE, workers: Optional[int] = None) -> Path:
    """Write the shapes dataset to `out_dir` (COCO 2017 layout) and return its path.

    min_size / max_size bound an object's size, sqrt(area) in pixels as in COCO's small (< 32) /
    medium / large (>= 96) ranges; objects are also shrunk to fit 90 % of their image.
    `workers` processes render in parallel (None = CPU count, at most 8); the output does not
    depend on it. Overwrites files already in `out_dir`.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"make_shapes: need 1 <= min_size <= max_size, got {min_size}, {max_size}.")
    out_dir = Path(out_dir)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    params = {"num_train": num_train, "num_val": num_val, "seed": seed,
              "min_size": float(min_size), "max_size": float(max_size)}
    _write_split(out_dir, "train", params, workers)
    _write_split(out_dir, "val", params, workers)  # written last: its JSON marks a finished dataset
    return out_dir


def ensure_shapes(root: PathLike = DEFAULT_ROOT, **kwargs: Any) -> Path:
    """The shapes dataset at `root`, generated (with make_shapes(**kwargs)) only if missing.

    The default root is the repository's `data/shapes` (see `_default_root`). A dataset counts as present when
    `<root>/annotations/instances_val2017.json` exists; it is then reused as is. Generation writes
    to a temporary sibling folder renamed into place at the end, so an interrupted run never
    leaves a half-written dataset behind.
    """
    root = Path(root)
    marker = root / MARKER
    if marker.is_file():
        _warn_if_different(marker, {"min_size": MIN_SIZE, "max_size": MAX_SIZE, **kwargs})
        return root
    return build_once(root, lambda tmp: make_shapes(tmp, **kwargs), "ensure_shapes")


def _warn_if_different(marker: Path, kwargs: dict[str, Any]) -> None:
    """Tell the user when an existing dataset was made with other settings than they now ask for
    (the object sizes are always compared: a dataset from an older default is reported, not
    silently reused, and not deleted either: it may be someone's own)."""
    with open(marker, encoding="utf-8") as f:
        info = json.load(f).get("info", {})
    differ = {k: (v, info[k]) for k, v in kwargs.items() if k in info and info[k] != v}
    if differ:
        warnings.warn(f"ensure_shapes: reusing {marker.parent.parent}, made with other settings "
                      f"(requested, stored): {differ}. Delete the folder to regenerate.", stacklevel=3)


def summarize(root: PathLike) -> str:
    """A few lines describing a COCO-layout dataset: images, objects, empties, classes, COCO size ranges."""
    root = Path(root)
    lines = []
    files = sorted((root / "annotations").glob("instances_*2017.json"),
                   key=lambda f: (not f.name.startswith("instances_train"), not f.name.startswith("instances_val"), f.name))
    for ann_file in files:                                      # train, val, then any other split
        split = ann_file.name[len("instances_"):-len("2017.json")]
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
        anns = data["annotations"]
        with_objects = {a["image_id"] for a in anns}
        names = {c["id"]: c["name"] for c in data["categories"]}
        per_class = {name: sum(a["category_id"] == cid for a in anns) for cid, name in names.items()}
        areas = np.array([a["area"] for a in anns], dtype=float)
        small, large = int((areas < 32 ** 2).sum()), int((areas >= 96 ** 2).sum())
        lines.append(
            f"{split}2017: {len(data['images'])} images, {len(anns)} objects, "
            f"{len(data['images']) - len(with_objects)} without objects; per class {per_class}; "
            f"small/medium/large {small}/{len(anns) - small - large}/{large}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_ROOT, help="output folder (default: %(default)s, "
                        "relative to the current directory)")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_size", type=float, default=MIN_SIZE, help="smallest object, sqrt(area) in px")
    parser.add_argument("--max_size", type=float, default=MAX_SIZE, help="largest object, sqrt(area) in px")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = make_shapes(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                      min_size=args.min_size, max_size=args.max_size, workers=args.workers)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    print(summarize(out))


if __name__ == "__main__":
    main()
