"""Does each decoder layer tighten the boxes? IoU with the matched object, layer by layer.

    python benchmarks/refinement_by_layer.py outputs/shapes/checkpoint.pth [--results FILE.jsonl]

Runs a spatial-prior checkpoint on its val set. For every query the Hungarian matcher pairs with
an object (on the final layer's outputs), the IoU with that object of: the query's first reference
box (with query selection: the encoder's proposal), then the box each decoder layer predicts. A
layer that refines raises the mean IoU and the share above 0.5; one that only repeats its input
leaves them where they were (what issue 7 found before fine_memory.py). One JSON line with
`--results`.
"""

from __future__ import annotations

import argparse
import json

import torch

from detr_full import box_ops
from detr_full.build import build_detr
from detr_full.checkpoint import load_checkpoint, load_model_weights
from detr_full.config import TrainConfig, config_from_dict, model_config
from detr_full.data.collate import collate_fn
from detr_full.data.shapes import ensure_shapes
from detr_full.run_setup import dataset_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--results", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(TrainConfig, {**ckpt["args"], "pretrained_backbone": ""})
    if not cfg.spatial_prior:
        raise SystemExit(f"{args.checkpoint}: a model without the spatial prior has no reference boxes to compare.")
    model, criterion, _ = build_detr(model_config(cfg))
    load_model_weights(model, ckpt["model"], source=args.checkpoint)
    model.eval()
    priors = []                                                      # each forward pass's RefinedPrior
    decoding = model.spatial_prior.decoding
    model.spatial_prior.decoding = lambda *a, **k: priors.append(decoding(*a, **k)) or priors[-1]
    dataset = dataset_for(cfg, "val", cfg.coco_path or ensure_shapes())
    ious = []                                                        # (matched, 1 + layers) per batch
    with torch.no_grad():
        for images, padding_mask, targets in torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_fn):
            out = model(images, padding_mask)
            boxes = [priors[-1].references[0]] + [a["pred_boxes"] for a in out["aux_outputs"]] + [out["pred_boxes"]]
            for b, (i, j) in enumerate(criterion.matcher(out, targets)):
                if len(i):
                    gt = box_ops.box_cxcywh_to_xyxy(targets[b]["boxes"][j])              # (T, 4)
                    ious.append(torch.stack([box_ops.box_iou(box_ops.box_cxcywh_to_xyxy(x[b, i]), gt)[0].diagonal()
                                             for x in boxes], 1))                       # (T, 1 + layers)
    iou = torch.cat(ious)
    names = ["first reference"] + [f"layer {k}" for k in range(iou.shape[1] - 1)]
    record = {"checkpoint": args.checkpoint, "objects": len(iou),
              "mean_iou": {n: round(float(v), 3) for n, v in zip(names, iou.mean(0))},
              "iou_above_0.5": {n: round(float(v), 3) for n, v in zip(names, (iou >= 0.5).float().mean(0))}}
    for n in names:
        print(f"{n:>16}: mean IoU {record['mean_iou'][n]:.3f}, IoU >= 0.5 for {record['iou_above_0.5'][n]:.3f}")
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
