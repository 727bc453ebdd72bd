"""A frozen backbone with its BatchNorm folded into the convolutions, against the same body unfolded.

    python benchmarks/folded_backbone.py [--repeats 5]

Not a test: the measurement behind `Backbone.folded_body` (detr_full/backbone.py). A frozen
backbone (no trainable parameter, FrozenBatchNorm2d) computes conv -> scale and shift per channel;
folded, the scale and shift are in the convolution's weight and bias, so each feature map is
written once instead of twice. One thread, no gradients, channels-last input as `Backbone.run`
gives it; each case is timed `--repeats` times after one warm-up call and the median is printed,
with the largest difference between the two outputs. The cases are the recipes' backbones at their
batch and image sizes: the ResNet-18 of `make train` (stride 16, batch 8 at 176 px) and the
ImageNet MobileNetV2 of the trees recipe (stride 16, batch 4 at 432 px).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from detr_full.backbone import Backbone

CASES = (("resnet18", 8, (176, 176)), ("mobilenet_v2", 4, (432, 432)))


def median_seconds(fn, repeats: int) -> float:
    fn()                                                        # warm-up: oneDNN picks its kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"{'backbone':<14} {'batch x size':<14} {'unfolded s':>10} {'folded s':>9} {'ratio':>6} {'max |diff|':>10}")
    for name, batch, size in CASES:
        backbone = Backbone(name, train_backbone=False, stride=16).eval()
        images = torch.rand(batch, 3, *size).contiguous(memory_format=torch.channels_last)
        folded = backbone.folded_body()
        with torch.no_grad():
            unfolded_s = median_seconds(lambda: backbone.body(images), args.repeats)
            folded_s = median_seconds(lambda: folded(images), args.repeats)
            diff = (backbone.body(images) - folded(images)).abs().max().item()
        print(f"{name:<14} {f'{batch} x {size[0]}':<14} {unfolded_s:>10.3f} {folded_s:>9.3f} "
              f"{unfolded_s / folded_s:>5.2f}x {diff:>10.1e}")


if __name__ == "__main__":
    main()
