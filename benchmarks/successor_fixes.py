"""Learning curves of DETR and each successor's fix on the shapes data (issue 8, notebook 12).

Not a test: the measurement behind notebook 12's table and the README's. For every run of
`detr_full.course.SUCCESSOR_FIXES` (or those named with --runs), trains the comparison recipe
(`detr_full.course.comparison_recipe`) with that run's options for --steps steps on one CPU thread, evaluates every --eval_every
steps, and appends one JSON line per run (name, seed, config, curve) to --results.

    python benchmarks/successor_fixes.py --seed 1 --steps 400 --eval_every 50 \\
        --results benchmarks/results/successor_fixes.jsonl

Use both cores with two processes on disjoint --runs; nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from detr_full.course import SUCCESSOR_FIXES, comparison_recipe
from detr_full.data.shapes import ensure_shapes
from detr_full.learning_curve import learning_curve
from detr_full.pretrain import PretrainConfig, ensure_pretrained


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=list(SUCCESSOR_FIXES), help="names in SUCCESSOR_FIXES")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--val_images", type=int, default=200)
    parser.add_argument("--pretrain_steps", type=int, default=300, help="notebook 02's cached pretraining")
    parser.add_argument("--results", default="benchmarks/results/successor_fixes.jsonl")
    ns = parser.parse_args(argv)
    unknown = [r for r in ns.runs if r not in SUCCESSOR_FIXES]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {list(SUCCESSOR_FIXES)}")
    torch.set_num_threads(1)
    root = ensure_shapes()
    backbone = ensure_pretrained(root, PretrainConfig(steps=ns.pretrain_steps, seed=0), progress=False)
    for name in ns.runs:
        cfg = comparison_recipe(backbone, root, ns.seed, ns.warmup_steps, "cpu", **SUCCESSOR_FIXES[name])
        print(f"== {name}", flush=True)
        curve = learning_curve(cfg, ns.steps, ns.eval_every, val_images=ns.val_images, progress=True)
        with open(ns.results, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "seed": ns.seed, "steps": ns.steps, "curve": curve,
                                "config": dataclasses.asdict(cfg)}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
