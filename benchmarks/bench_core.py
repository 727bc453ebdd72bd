"""Speed of the detr_full core on CPU, next to the official implementation (../shared/REFERENCE.md §9).

    python benchmarks/bench_core.py [--repeats 5]

Single-threaded, like the official figures: on a busy 2-core machine two torch threads wait on
each other and timings swing 5-100x. Random-init R50 DETR with main.py defaults (aux loss on),
two images 3x512x512 and 3x512x480 (padded to 512x512) with 5 and 3 target boxes. Each figure is
the median (min-max) over the repeats after one warm-up.

"materialised attention" is the same model with every attention layer computing its full weight
matrix (what the official layers do, since they ask nn.MultiheadAttention for weights), measured
in the same run to show what scaled_dot_product_attention saves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from detr_full import DETRConfig, HungarianMatcher, PostProcess, build_detr
from detr_full.transformer import MultiheadAttention

OFFICIAL = {  # REFERENCE.md §9, official implementation, 1 thread, this machine kind
    "train step (fwd + loss + bwd), R50, batch 2, 512x512": 3.59,
    "train step + clip_grad_norm_ + AdamW": 3.68,
    "eval forward (no_grad), R50, batch 2, 512x512": 1.38,
    "matcher, batch 8 x 100 queries x 92 classes, 80 targets": 2.06e-3,
    "PostProcess, batch 8 x 100 queries": 214e-6,
}


def timed(fn, repeats: int) -> tuple[float, float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def report(name: str, result: tuple[float, float, float], baseline: float | None = None) -> None:
    median, lo, hi = result
    line = f"{name:<58} ours {fmt(median):>9} ({fmt(lo)}-{fmt(hi)})"
    if name in OFFICIAL:
        line += f"   official {fmt(OFFICIAL[name]):>9}   speed-up x{OFFICIAL[name] / median:.2f}"
    if baseline is not None:
        line += f"   ratio vs materialised attention {median / baseline:.2f}"
    print(line, flush=True)


def set_materialised_attention(model: torch.nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, MultiheadAttention):
            m.return_weights = on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip_model", action="store_true", help="matcher and PostProcess only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, repeats {args.repeats}")

    if not args.skip_model:
        model, criterion, _ = build_detr(DETRConfig())
        images = torch.randn(2, 3, 512, 512)
        mask = torch.zeros(2, 512, 512, dtype=torch.bool)
        mask[1, :, 480:] = True
        targets = [{"labels": torch.randint(1, 91, (n,)),
                    "boxes": torch.cat([torch.rand(n, 2) * 0.5 + 0.25, torch.rand(n, 2) * 0.3 + 0.05], 1)}
                   for n in (5, 3)]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

        def train_step(with_optimizer: bool = False) -> None:
            model.train()
            loss = criterion.total_loss(criterion(model(images, mask), targets))
            optimizer.zero_grad()
            loss.backward()
            if with_optimizer:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                optimizer.step()

        def eval_forward() -> None:
            model.eval()
            with torch.no_grad():
                model(images, mask)

        for name, fn in (("train step (fwd + loss + bwd), R50, batch 2, 512x512", train_step),
                         ("eval forward (no_grad), R50, batch 2, 512x512", eval_forward)):
            set_materialised_attention(model, True)
            baseline = timed(fn, args.repeats)
            set_materialised_attention(model, False)
            report(name, timed(fn, args.repeats), baseline[0])
        report("train step + clip_grad_norm_ + AdamW", timed(lambda: train_step(True), args.repeats))

    matcher = HungarianMatcher(1, 5, 2)
    outputs = {"pred_logits": torch.randn(8, 100, 92), "pred_boxes": torch.rand(8, 100, 4) * 0.5 + 0.1}
    targets = [{"labels": torch.randint(1, 91, (10,)), "boxes": torch.rand(10, 4) * 0.5 + 0.1} for _ in range(8)]
    report("matcher, batch 8 x 100 queries x 92 classes, 80 targets", timed(lambda: matcher(outputs, targets), 200))
    sizes = torch.tensor([[480, 640]] * 8)
    report("PostProcess, batch 8 x 100 queries", timed(lambda: PostProcess()(outputs, sizes), 200))


if __name__ == "__main__":
    main()
