"""Speed of the detr_full core on the CPU, side by side with the official implementation in one run.

    git clone https://github.com/facebookresearch/detr /tmp/official_detr    # outside this repository
    python benchmarks/bench_core.py --official /tmp/official_detr [--repeats 7]

Single-threaded: on a busy 2-core machine two torch threads wait on each other and timings swing
5-100x. Both models are the official R50 DETR at main.py's defaults (aux loss on) with the same
random weights (ours loads the official model's state_dict), on the same two images 3x512x512 and
3x512x480 (padded to 512x512) with 5 and 3 target boxes. Each repeat times ours, then the official
code, alternately, after a warm-up of both; a figure is the median over the repeats, and the ratio
is ours / official (below 1: ours is faster). Without --official only our figures are printed.

The official code is imported from the given folder, never copied into this repository. Its
backbone asks torchvision for ImageNet weights (`pretrained=True` on the main process); the
benchmark builds it with random weights instead, as they are overwritten anyway.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torchvision

from detr_full import DETRConfig, HungarianMatcher, build_detr


def timed_pair(ours: Callable[[], None], theirs: Optional[Callable[[], None]], repeats: int
               ) -> tuple[float, Optional[float]]:
    """Median seconds of ours and theirs, timed alternately after one warm-up each."""
    ours()
    if theirs is not None:
        theirs()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((ours, a), (theirs, b)):
            if fn is None:
                continue
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b) if b else None


def fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def report(name: str, ours: float, theirs: Optional[float]) -> None:
    line = f"{name:<58} ours {fmt(ours):>9}"
    if theirs is not None:
        line += f"   official {fmt(theirs):>9}   ours / official {ours / theirs:.2f}"
    print(line, flush=True)


def official_detr(path: Path):
    """The official model, criterion and PostProcess, built by its own `build(args)` with main.py's defaults."""
    sys.path.insert(0, str(path))
    import main as official_main                        # noqa: E402  (the official repository's main.py)
    from models import build_model                      # noqa: E402

    args = official_main.get_args_parser().parse_args([])
    args.device = "cpu"
    original = torchvision.models.resnet50

    def random_resnet50(*a, pretrained=False, **kw):     # no download: the weights are replaced below
        return original(*a, weights=None, **kw)

    torchvision.models.resnet50 = random_resnet50
    try:
        model, criterion, postprocessors = build_model(args)
    finally:
        torchvision.models.resnet50 = original
    from util.misc import NestedTensor                  # noqa: E402
    return model, criterion, postprocessors["bbox"], NestedTensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=None, help="a checkout of facebookresearch/detr")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, repeats {args.repeats}")

    model, criterion, postprocess = build_detr(DETRConfig())
    official = official_detr(args.official) if args.official else None
    if official is not None:
        model.load_state_dict(official[0].state_dict())  # the same weights: our keys are the official ones
    images = torch.randn(2, 3, 512, 512)
    mask = torch.zeros(2, 512, 512, dtype=torch.bool)
    mask[1, :, 480:] = True
    targets = [{"labels": torch.randint(1, 91, (n,)),
                "boxes": torch.cat([torch.rand(n, 2) * 0.5 + 0.25, torch.rand(n, 2) * 0.3 + 0.05], 1)} for n in (5, 3)]

    def steps(net, crit, forward):
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

        def train_step(with_optimizer: bool = False) -> None:
            net.train()
            losses = crit(forward(net), targets)
            loss = sum(losses[k] * w for k, w in crit.weight_dict.items() if k in losses)
            optimizer.zero_grad()
            loss.backward()
            if with_optimizer:
                torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
                optimizer.step()

        def eval_forward() -> None:
            net.eval()
            with torch.no_grad():
                forward(net)
        return train_step, lambda: train_step(True), eval_forward

    ours = steps(model, criterion, lambda net: net(images, mask))
    theirs = steps(official[0], official[1], lambda net: net(official[3](images, mask))) if official else (None,) * 3
    names = ("train step (fwd + loss + bwd), R50, batch 2, 512x512", "train step + clip_grad_norm_ + AdamW",
             "eval forward (no_grad), R50, batch 2, 512x512")
    for name, fn, fn_official in zip(names, ours, theirs):
        report(name, *timed_pair(fn, fn_official, args.repeats))

    outputs = {"pred_logits": torch.randn(8, 100, 92), "pred_boxes": torch.rand(8, 100, 4) * 0.5 + 0.1}
    many = [{"labels": torch.randint(1, 91, (10,)), "boxes": torch.rand(10, 4) * 0.5 + 0.1} for _ in range(8)]
    matcher = HungarianMatcher(1, 5, 2)
    report("matcher, batch 8 x 100 queries x 92 classes, 80 targets",
           *timed_pair(lambda: matcher(outputs, many),
                       (lambda: official[1].matcher(outputs, many)) if official else None, 200))
    sizes = torch.tensor([[480, 640]] * 8)
    report("PostProcess, batch 8 x 100 queries",
           *timed_pair(lambda: postprocess(outputs, sizes), (lambda: official[2](outputs, sizes)) if official else None,
                       200))


if __name__ == "__main__":
    main()
