"""Training steps per second of the shapes CPU recipe with its ResNet trained, frozen in the model,
or frozen and run in the loader's workers (`backbone_in_loader`), measured side by side in one run.

    python benchmarks/backbone_in_loader.py [--steps 60] [--repeats 3]

Every variant trains the recipe's model on data/shapes with one main torch thread, as `make
train` and the CLI run it, except "2 main threads", which shows why: they compete with the workers.
In the model, the loader's worker decodes and augments the images and the main process runs the
ResNet and the rest; in the loader, the workers also run the ResNet on the padded batch, so the
two halves of a step run on the two cores. The last three variants show what finer boxes for
small objects would cost: stride 8 (4x the tokens) or larger images. The figure is steps per
wall-clock second over `--steps` steps after 5 warm-up steps, median of the repeats, the variants
alternating. Run it on a 2-core machine with nothing else running: the loader variants use the
second core.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from detr_full.config import shapes_cpu_recipe
from detr_full.engine import train_one_epoch
from detr_full.run_setup import setup_run


VARIANTS = {  # overrides of the recipe (random weights: the speed does not depend on them)
    "ResNet trained (layer2-3)": dict(lr_backbone=1e-4, backbone_in_loader=False, num_workers=1),
    "frozen, in the model": dict(lr_backbone=0.0, backbone_in_loader=False, num_workers=1),
    "frozen, in 1 loader worker": dict(lr_backbone=0.0, backbone_in_loader=True, num_workers=1),
    "frozen, in 2 loader workers": dict(lr_backbone=0.0, backbone_in_loader=True, num_workers=2),
    "... and 2 main threads": dict(lr_backbone=0.0, backbone_in_loader=True, num_workers=2, threads=2),
    # what finer boxes for small objects would cost (benchmarks/README.md): stride 8, larger images
    "... at stride 8": dict(lr_backbone=0.0, backbone_in_loader=True, num_workers=2, backbone_stride=8),
    "... at stride 8, 1 enc. layer": dict(lr_backbone=0.0, backbone_in_loader=True, num_workers=2,
                                         backbone_stride=8, enc_layers=1),
    "... images 176-224 px": dict(lr_backbone=0.0, backbone_in_loader=True, num_workers=2,
                                  scales="176,192,208,224", max_size=288),
}


def steps_per_second(overrides: dict, steps: int) -> float:
    overrides = dict(overrides)
    torch.set_num_threads(overrides.pop("threads", 1))
    run = setup_run(shapes_cpu_recipe(pretrained_backbone="", **overrides))
    loader = run.train_loader(epoch=0)
    marks: list[float] = []
    batches = itertools.islice(loader, 5 + steps)         # the worker's start is inside the warm-up
    train_one_epoch(run.model, run.criterion, batches, run.optimizer, "cpu", 0, run.cfg.clip_max_norm,
                    scheduler_step=lambda: marks.append(time.perf_counter()), progress=False)
    return steps / (marks[-1] - marks[4])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, overrides in VARIANTS.items():
            rates[name].append(steps_per_second(overrides, args.steps))
    base = statistics.median(rates["frozen, in the model"])
    for name, r in rates.items():
        rate = statistics.median(r)
        print(f"{name:31s} {rate:5.2f} steps/s = {rate / base:4.2f}x frozen in the model "
              f"(runs: {', '.join(f'{x:.2f}' for x in r)})")


if __name__ == "__main__":
    main()
