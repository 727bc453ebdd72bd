"""A second synthetic detection set, unlike data/shapes, to check that the CPU recipe is not tuned
to one generator (issue 7: "other shapes, sizes 10-120 px, images 192-400 px, grayscale and empty
images").

Differences from `detr_full.data.shapes`, on purpose: other classes (ring, hexagon, ellipse,
L-shape, arrow; ids 2, 4, 6, 9, 11), grayscale PNGs, larger images (192..400 px per side),
object sizes (sqrt of area) log-uniform in 10..120 px, a noise-and-gradient background instead of
colour blotches, rectangle outlines as clutter, 20 % empty images, up to 6 objects.

    python benchmarks/other_shapes.py --out /tmp/other_shapes
    python -m detr_full.train --recipe shapes_cpu --coco_path /tmp/other_shapes --output_dir runs/other
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageDraw

CATEGORIES = [{"id": 2, "name": "ring"}, {"id": 4, "name": "hexagon"}, {"id": 6, "name": "ellipse"},
              {"id": 9, "name": "L-shape"}, {"id": 11, "name": "arrow"}]


def _outline(name: str) -> np.ndarray:
    """Polygon centred at 0 inside the unit square [-0.5, 0.5]^2, (n, 2) xy (the ring is drawn apart)."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if name in ("ring", "ellipse"):
        ry = 0.5 if name == "ring" else 0.25  # ellipses are 2:1
        return np.stack([0.5 * np.cos(t), ry * np.sin(t)], 1)
    if name == "hexagon":
        a = np.arange(6) * np.pi / 3
        return 0.5 * np.stack([np.cos(a), np.sin(a)], 1)
    if name == "L-shape":
        return np.array([[-.5, -.5], [-.1, -.5], [-.1, .1], [.5, .1], [.5, .5], [-.5, .5]])
    if name == "arrow":
        return np.array([[-.5, -.12], [.1, -.12], [.1, -.35], [.5, 0], [.1, .35], [.1, .12], [-.5, .12]])
    raise ValueError(name)


def render(rng: np.random.Generator) -> tuple[PIL.Image.Image, list[dict]]:
    w, h = (int(v) for v in rng.integers(192, 401, size=2))
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = rng.uniform(-60, 60) * xx / w + rng.uniform(-60, 60) * yy / h
    background = np.clip(rng.uniform(60, 190) + gradient + rng.normal(0, 12, (h, w)), 0, 255)
    image = PIL.Image.fromarray(background.astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):  # rectangle outlines: structure that is not an object
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        draw.rectangle([x0, y0, x0 + rng.uniform(10, 80), y0 + rng.uniform(10, 80)],
                       outline=int(rng.integers(0, 256)), width=1)
    objects, boxes = [], []
    n = 0 if rng.uniform() < 0.2 else int(rng.integers(1, 7))
    for _ in range(n):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        size = math.exp(rng.uniform(math.log(10), math.log(120)))
        angle = rng.uniform(0, 2 * np.pi) if cat["name"] != "ring" else 0.0
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        poly = _outline(cat["name"]) @ rot.T * size * 1.2
        lo, hi = poly.min(0), poly.max(0)
        if (hi - lo).max() > 0.9 * min(w, h):
            continue
        cx, cy = rng.uniform(-lo[0], w - hi[0]), rng.uniform(-lo[1], h - hi[1])
        box = [cx + lo[0], cy + lo[1], cx + hi[0], cy + hi[1]]
        if any(min(box[2], b[2]) > max(box[0], b[0]) and min(box[3], b[3]) > max(box[1], b[1]) for b in boxes):
            continue  # no overlaps at all: simpler than data/shapes' tolerance
        mean = float(background[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1].mean())
        shade = int(rng.uniform(0, 40)) if mean > 127 else int(rng.uniform(215, 255))
        pts = [(float(x), float(y)) for x, y in poly + [cx, cy]]
        draw.polygon(pts, fill=shade)
        if cat["name"] == "ring":  # punch the hole with the local background level
            inner = [(float(x), float(y)) for x, y in 0.5 * poly + [cx, cy]]
            draw.polygon(inner, fill=int(mean))
        boxes.append(box)
        objects.append({"category_id": cat["id"], "bbox": [round(box[0], 2), round(box[1], 2),
                                                           round(box[2] - box[0], 2), round(box[3] - box[1], 2)]})
    return image, objects


def make(out: Path, num_train: int, num_val: int, seed: int) -> None:
    for split, n, code in (("train", num_train, 0), ("val", num_val, 1)):
        folder = out / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image, objects = render(np.random.default_rng([seed, code, i]))
            name = f"{i + 1:012d}.png"
            image.save(folder / name, compress_level=1)
            images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height})
            for obj in objects:
                w, h = obj["bbox"][2:]
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0,
                                    "area": round(w * h, 2), **obj})
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        with open(out / "annotations" / f"instances_{split}2017.json", "w", encoding="utf-8") as f:
            json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/other_shapes")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make(Path(args.out), args.num_train, args.num_val, args.seed)
    print(f"wrote {args.out}")
