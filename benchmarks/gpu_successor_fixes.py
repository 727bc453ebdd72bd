"""GPU check of the successors' fixes: bf16 autocast against fp32, training steps under AMP, step times.

Not a test (CI has no GPU): run on a CUDA machine, e.g. the H200 the course's sessions borrow.
For every run of `detr_full.learning_curve.SUCCESSOR_FIXES`, on synthetic batches (random images
with padding, 1 to 8 random boxes per image, labels 1..18):
- `amp_loss_rel_diff`: |loss(bf16 autocast) - loss(fp32)| / loss(fp32) on the same weights and batch;
- `amp_train_final_loss`: `engine.train_one_epoch(amp=True)` for --train_steps steps runs without a
  non-finite loss (it raises otherwise), and its last loss;
- `gpu_ms_per_step_fp32`, `gpu_ms_per_step_bf16`: the GPU time of one such step (the sum of the
  kernels' times in a torch.profiler trace, as its table's "Self CUDA time total"): how much of the
  step the GPU is busy;
- `ms_per_step_fp32`, `ms_per_step_bf16`: a full training step (forward, matching, loss, backward,
  clipping, AdamW), median of --timed_steps after 5 warm-up steps, at two sizes: the shapes CPU
  recipe's model ("recipe": ResNet-18, 2+2 layers, 10 queries, 160 px, batch 8) and the paper's
  ("paper": ResNet-50, 6+6 layers, hidden 256, 100 queries, 800 x 1066 px, batch 4).

    python benchmarks/gpu_successor_fixes.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from detr_full.build import build_detr
from detr_full.config import model_config, shapes_cpu_recipe
from detr_full.course import COMPARISON_RECIPE, SUCCESSOR_FIXES
from detr_full.engine import _autocast, train_one_epoch
from detr_full.optim import build_optimizer

SIZES = {
    "recipe": dict(overrides={}, batch=8, height=160, width=224),
    "paper": dict(overrides=dict(backbone="resnet50", backbone_stride=32, hidden_dim=256, enc_layers=6, dec_layers=6,
                                 dim_feedforward=2048, nheads=8, num_queries=100, lr=1e-4, lr_backbone=1e-5),
                  batch=4, height=800, width=1066),
}


def synthetic_batch(batch: int, height: int, width: int, device: torch.device, generator: torch.Generator):
    """(images (B, 3, H, W), padding_mask (B, H, W), targets): the right quarter of odd images is padding."""
    images = torch.randn(batch, 3, height, width, generator=generator)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    mask[1::2, :, 3 * width // 4:] = True
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 9, (1,), generator=generator))
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, 19, (n,), generator=generator),
                        "boxes": torch.cat([centre, size], 1)})
    return (images.to(device), mask.to(device),
            [{k: v.to(device) for k, v in t.items()} for t in targets])


def build(name: str, size: str, device: torch.device):
    cfg = shapes_cpu_recipe(**{**COMPARISON_RECIPE, **SUCCESSOR_FIXES[name], **SIZES[size]["overrides"]},
                            pretrained_backbone="", num_classes=19)
    model, criterion, _ = build_detr(model_config(cfg))
    return cfg, model.to(device), criterion.to(device), build_optimizer(model, cfg)


def forward_loss(model, criterion, batch, amp: bool, device) -> float:
    images, mask, targets = batch
    torch.manual_seed(0)                                       # the same denoising noise in both precisions
    with torch.no_grad(), _autocast(device, amp):
        outputs = model(images, mask, targets)
    outputs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in outputs.items()}
    outputs["aux_outputs"] = [{k: v.float() for k, v in a.items()} for a in outputs.get("aux_outputs", [])]
    if "dn_outputs" in outputs:
        outputs["dn_outputs"] = {k: (v.float() if v.is_floating_point() else v) for k, v in outputs["dn_outputs"].items()}
    with torch.no_grad():
        return float(criterion.total_loss(criterion(outputs, targets)))


def step_times(model, criterion, optimizer, batches, amp: bool, device, timed: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(5 + timed):
        sync()
        start = time.perf_counter()
        train_one_epoch(model, criterion, [batches[i % len(batches)]], optimizer, device, epoch=0, max_norm=0.1,
                        amp=amp, progress=False)
        sync()
        if i >= 5:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def gpu_time(model, criterion, optimizer, batch, amp: bool, device) -> float:
    """Milliseconds the GPU spends in kernels during one training step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_one_epoch(model, criterion, [batch], optimizer, device, epoch=0, max_norm=0.1, amp=amp, progress=False)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages()            # kernels only: an op's row repeats its kernels' time
               if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
    return sum(e.self_device_time_total for e in kernels) / 1000


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_successor_fixes.json")
    parser.add_argument("--train_steps", type=int, default=30)
    parser.add_argument("--timed_steps", type=int, default=20)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--runs", nargs="*", default=list(SUCCESSOR_FIXES))
    parser.add_argument("--device", default="cuda", help="cpu only to try the script (bf16 autocast on CPU)")
    ns = parser.parse_args(argv)
    device = torch.device(ns.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_successor_fixes.py needs a CUDA device.")
    torch.backends.cuda.matmul.allow_tf32 = False               # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "runs": []}
    for size in ns.sizes:
        spec = SIZES[size]
        generator = torch.Generator().manual_seed(0)
        batches = [synthetic_batch(spec["batch"], spec["height"], spec["width"], device, generator) for _ in range(4)]
        for name in ns.runs:
            torch.manual_seed(0)
            cfg, model, criterion, optimizer = build(name, size, device)
            model.train()
            fp32 = forward_loss(model, criterion, batches[0], False, device)
            bf16 = forward_loss(model, criterion, batches[0], True, device)
            record = {"size": size, "name": name, "loss_fp32": fp32, "loss_bf16": bf16,
                      "amp_loss_rel_diff": abs(bf16 - fp32) / abs(fp32)}
            if size == "recipe":
                stats = train_one_epoch(model, criterion, [batches[i % 4] for i in range(ns.train_steps)], optimizer,
                                        device, epoch=0, max_norm=cfg.clip_max_norm, amp=True, progress=False)
                record["amp_train_mean_loss"] = stats["loss"]
            for amp in (False, True):
                torch.manual_seed(0)
                _, model, criterion, optimizer = build(name, size, device)
                precision = "bf16" if amp else "fp32"
                record[f"ms_per_step_{precision}"] = step_times(
                    model.train(), criterion, optimizer, batches, amp, device, ns.timed_steps)
                if device.type == "cuda":
                    record[f"gpu_ms_per_step_{precision}"] = gpu_time(model, criterion, optimizer, batches[0], amp,
                                                                      device)
            if device.type == "cuda":
                record["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
                torch.cuda.reset_peak_memory_stats()
            print(json.dumps(record), flush=True)
            results["runs"].append(record)
            del model, criterion, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    with open(ns.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
