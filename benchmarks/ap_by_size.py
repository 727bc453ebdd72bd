"""Where a trained detector loses AP50: precision and recall by object size and IoU threshold.

    python benchmarks/ap_by_size.py outputs/shapes/checkpoint.pth [--results FILE.jsonl]

Runs the checkpoint on its val set (the `coco_path` and image sizes in its args) and evaluates
with pycocotools at IoU 0.1, 0.3, 0.5 and 0.75 instead of COCO's 0.5:0.95, per COCO area range:
a detection that is found at IoU 0.1 but lost at 0.5 names the object and misplaces its box.
Also: class-agnostic AP50 (does the class matter?) and, class-agnostic, the recall at IoU 0.1 and
0.5 by the number of objects in the image. One JSON line per call with `--results`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections import defaultdict

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from detr_full.checkpoint import load_checkpoint
from detr_full.config import TrainConfig, config_from_dict
from detr_full.data.coco import coco_api
from detr_full.data.collate import collate_fn
from detr_full.data.shapes import ensure_shapes
from detr_full.engine import coco_results
from detr_full.predict import load_predictor
from detr_full.run_setup import dataset_for

IOUS = (0.1, 0.3, 0.5, 0.75)


def detections(checkpoint: str) -> tuple[list[dict], object]:
    predictor, postprocess, _, _ = load_predictor(checkpoint, device="cpu")
    cfg = config_from_dict(TrainConfig, load_checkpoint(checkpoint)["args"])
    dataset = dataset_for(cfg, "val", cfg.coco_path or ensure_shapes())
    found: list[dict] = []
    with torch.no_grad():
        for images, padding_mask, targets in torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_fn):
            sizes = torch.stack([t["orig_size"] for t in targets])                  # (B, 2) h, w
            for per_image in coco_results(postprocess(predictor(images, padding_mask), sizes), targets).values():
                found += per_image
    return found, coco_api(dataset)


def evaluated(coco, results, ious, use_cats: bool = True) -> COCOeval:
    coco_eval = COCOeval(coco, results, "bbox")
    coco_eval.params.iouThrs, coco_eval.params.useCats = np.array(ious), int(use_cats)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def mean_valid(x: np.ndarray) -> float:
    return float(np.mean(x[x > -1])) if (x > -1).any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--results", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    found, coco = detections(args.checkpoint)
    with contextlib.redirect_stdout(io.StringIO()):
        results = coco.loadRes(found)
    by_class = evaluated(coco, results, IOUS)
    areas = by_class.params.areaRngLbl                                       # all, small, medium, large
    precision, recall = by_class.eval["precision"], by_class.eval["recall"]  # (T, R, K, A, M), (T, K, A, M)
    record: dict = {"checkpoint": args.checkpoint, "AP": {}, "recall": {}}
    for t, iou in enumerate(IOUS):
        record["AP"][str(iou)] = {a: round(mean_valid(precision[t, :, :, i, -1]), 3) for i, a in enumerate(areas)}
        record["recall"][str(iou)] = {a: round(mean_valid(recall[t, :, i, -1]), 3) for i, a in enumerate(areas)}
        print(f"IoU {iou:4}: AP " + "  ".join(f"{a} {v:.3f}" for a, v in record["AP"][str(iou)].items())
              + " | recall " + "  ".join(f"{a} {v:.3f}" for a, v in record["recall"][str(iou)].items()))
    agnostic = evaluated(coco, results, (0.1, 0.5), use_cats=False)
    record["class_agnostic_AP50"] = round(mean_valid(agnostic.eval["precision"][1, :, 0, 0, -1]), 3)
    print(f"class-agnostic AP50 {record['class_agnostic_AP50']:.3f}")
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])              # objects, found @0.1, @0.5
    for image in agnostic.evalImgs:
        if image is None or image["aRng"] != [0, 1e10] or not image["gtIds"]:
            continue
        n = len(image["gtIds"])
        counts[n][0] += n
        counts[n][1] += int((image["gtMatches"][0] > 0).sum())
        counts[n][2] += int((image["gtMatches"][1] > 0).sum())
    record["recall_by_objects_per_image"] = {
        n: {"objects": c[0], "IoU 0.1": round(c[1] / c[0], 3), "IoU 0.5": round(c[2] / c[0], 3)}
        for n, c in sorted(counts.items())}
    print("recall by objects per image (class-agnostic): " + "  ".join(
        f"{n}: {r['IoU 0.1']:.2f} / {r['IoU 0.5']:.2f} of {r['objects']}"
        for n, r in record["recall_by_objects_per_image"].items()) + "  (IoU 0.1 / 0.5)")
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
