"""What one training step is made of: aten ops per phase and reads back to the host, at the paper's size.

    python benchmarks/step_anatomy.py [--size 800 1066] [--batch 4] [--log_every 20]

Not a test: the measurement behind issue 21 (a training step that never waits on the host). One
step of `engine.train_one_epoch` with the paper's model (R50, 6+6 layers, 100 queries, auxiliary
losses, random weights, `batch` images of `size` with 5-8 boxes each) runs under a dispatch mode
that counts every aten op, by phase:

- forward: the model; criterion: the matching and the losses; backward; optimizer: gradient
  clipping and AdamW; engine: the rest of the step (logging, checks);

and every read of a tensor's value to the host outside the optimizer (`item()`, `bool()`,
`float()` = `aten._local_scalar_dense`; `.tolist()`, `.numpy()`): on a GPU each of these makes the
host wait for the device. On the CPU an op is a kernel call; on a GPU it is a kernel launch. Two
steps run, the second is counted (the first builds the optimizer's state).

On a CUDA machine it also times `--steps` steps (after a warm-up) with one synchronise, eager and
with CUDA graphs (cuda_graphs.py), fp32 and bf16, and profiles three steps of each (GPU kernel time,
kernel launches, memcpys, synchronisations per step). That part has not been run yet: no GPU was
lent to the session that wrote it.

To compare with an earlier version of this package, run the same command with that version first
on the path (e.g. a git worktree: `PYTHONPATH=/path/to/worktree python benchmarks/step_anatomy.py`).
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detr_full.config import TrainConfig, model_config
from detr_full.engine import train_one_epoch
from detr_full.optim import build_optimizer

PHASES = ("forward", "criterion", "backward", "optimizer", "engine")


class Anatomy(TorchDispatchMode):
    """Counts aten ops per phase, and the reads of a value to the host (outside the optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "engine"
        self.ops: collections.Counter = collections.Counter()
        self.reads: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[self.phase] += 1
        if func is torch.ops.aten._local_scalar_dense.default and self.phase != "optimizer":
            self.reads[self.phase] += 1                # the optimizer's step counters live on the host
        return func(*args, **(kwargs or {}))


def instrument(model, criterion, optimizer, anatomy: Anatomy):
    """Wrap the step's parts so that the anatomy knows the phase; returns a function that undoes it."""
    def phase(name, fn):
        def wrapped(*args, **kwargs):
            before, anatomy.phase = anatomy.phase, name
            try:
                return fn(*args, **kwargs)
            finally:
                anatomy.phase = before
        return wrapped

    patches = [(model, "forward", phase("forward", model.forward)),
               (criterion, "forward", phase("criterion", criterion.forward)),
               (optimizer, "step", phase("optimizer", optimizer.step)),
               (torch.nn.utils, "clip_grad_norm_", phase("optimizer", torch.nn.utils.clip_grad_norm_)),
               (torch.Tensor, "backward", phase("backward", torch.Tensor.backward))]
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def counted(name):
        def method(self, *args, **kwargs):
            if anatomy.phase != "optimizer":
                anatomy.reads[anatomy.phase] += 1
            return originals[name](self, *args, **kwargs)
        return method

    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    for obj, attr, fn in patches:
        setattr(obj, attr, fn)
    for name in originals:
        setattr(torch.Tensor, name, counted(name))

    def undo():
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    return undo


def batch(size: tuple[int, int], count: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, *size, generator=g)
    mask = torch.zeros(count, *size, dtype=torch.bool)
    targets = []
    for i in range(count):
        n = 5 + i % 4
        centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, 91, (n,), generator=g), "boxes": torch.cat([centres, sizes], 1),
                        "image_id": torch.tensor([i])})
    return images.to(device), mask.to(device), [{k: v.to(device) for k, v in t.items()} for t in targets]


def build(device: torch.device, fused: bool = False):
    from detr_full.build import build_detr
    cfg = TrainConfig(num_classes=91, pretrained_backbone="")           # the paper's model, official defaults
    model, criterion, _ = build_detr(model_config(cfg))
    if hasattr(criterion, "validate_targets"):
        criterion.validate_targets = False                              # a training run's: collate checked them
    model.to(device)
    criterion.to(device)
    optimizer = build_optimizer(model, cfg)
    if fused:                                  # what a GPU gets (build_optimizer fuses there): the CPU has it too
        groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}   # not the groups'
                  for g in optimizer.param_groups]                                # copied fused=None
        optimizer = torch.optim.AdamW(groups, fused=True)
    return cfg, model, criterion, optimizer


def count(size, batch_size, log_every, device, epoch_steps: int = 1, fused: bool = False) -> tuple[dict, dict]:
    """Ops and reads per step: the mean over one counted epoch of `epoch_steps` steps (its closing read of
    the logged values included, so a one-step epoch counts that read in full)."""
    torch.manual_seed(0)
    cfg, model, criterion, optimizer = build(device, fused)
    steps = [batch(size, batch_size, device, seed) for seed in (0, 1)]
    kwargs = {"log_every": log_every} if "log_every" in train_one_epoch.__code__.co_varnames else {}
    train_one_epoch(model, criterion, steps[:1], optimizer, device, 0, cfg.clip_max_norm, progress=False, **kwargs)
    anatomy = Anatomy()
    undo = instrument(model, criterion, optimizer, anatomy)
    try:
        with anatomy:
            train_one_epoch(model, criterion, steps[1:] * epoch_steps, optimizer, device, 0, cfg.clip_max_norm,
                            progress=False, **kwargs)
    finally:
        undo()
    return ({k: v / epoch_steps for k, v in anatomy.ops.items()},
            {k: v / epoch_steps for k, v in anatomy.reads.items()})


def gpu_figures(size, batch_size, steps: int, amp: bool, graphs: bool) -> dict:
    """On a CUDA device: wall ms per step over `steps` steps with one synchronise, and from a profile of 3
    steps the GPU kernel ms, kernel launches, memcpys and synchronisations per step."""
    from torch.profiler import ProfilerActivity, profile

    from detr_full.cuda_graphs import GraphedDETR
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg, model, criterion, optimizer = build(device)
    train = GraphedDETR(model) if graphs else model
    batches = [batch(size, batch_size, device, seed) for seed in range(2)] * (steps + 8)

    def run(count: int) -> None:
        train_one_epoch(train, criterion, batches[:count], optimizer, device, 0, cfg.clip_max_norm, amp=amp,
                        progress=False, log_every=20)

    run(6)                                                            # warm-up (and the graphs' recording)
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(3)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)

    def calls(*names):
        return sum(e.count for e in events if any(n in e.key for n in names)) / 3
    return {"wall_ms": wall * 1e3, "kernel_ms": kernel_us / 3 / 1e3, "launches": calls("LaunchKernel", "GraphLaunch"),
            "memcpys": calls("Memcpy"), "syncs": calls("Synchronize")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--log_every", type=int, default=20, help="engine: read the logged values every N steps")
    parser.add_argument("--steps", type=int, default=50, help="timed steps on a GPU")
    parser.add_argument("--fused", action="store_true", help="count with the fused AdamW a GPU run gets (its "
                        "found_inf replaces the per-step finiteness read)")
    parser.add_argument("--epoch_steps", type=int, default=1, help="steps in the counted epoch; the figures are "
                        "per step, its mean (e.g. --epoch_steps 20 --size 320 320: the steady state, cheaply)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    ops, reads = count(tuple(args.size), args.batch, args.log_every, cpu, args.epoch_steps, args.fused)
    print(f"one training step on the CPU, R50 6+6 layers, 100 queries, batch {args.batch} at {args.size[0]}x"
          f"{args.size[1]}, log_every {args.log_every}{', fused AdamW' if args.fused else ''}: the mean over an epoch of "
          f"{args.epoch_steps} step(s)")
    print(f"{'phase':10s} {'aten ops':>9s} {'reads to host':>14s}")
    for phase in PHASES:
        print(f"{phase:10s} {ops.get(phase, 0):9.0f} {reads.get(phase, 0):14.2f}")
    print(f"{'total':10s} {sum(ops.values()):9.0f} {sum(reads.values()):14.2f}   (reads outside the optimizer)")
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU figures (wall and kernel time per step, launches, memcpys, syncs) were not "
              "measured")
        return
    print(f"\n{'GPU, per step':22s} {'wall ms':>8s} {'kernel ms':>10s} {'launches':>9s} {'memcpys':>8s} {'syncs':>6s}")
    for graphs in (False, True):
        for amp in (False, True):
            f = gpu_figures(tuple(args.size), args.batch, args.steps, amp, graphs)
            name = f"{'graphs' if graphs else 'eager'}, {'bf16' if amp else 'fp32'}"
            print(f"{name:22s} {f['wall_ms']:8.1f} {f['kernel_ms']:10.1f} {f['launches']:9.0f} {f['memcpys']:8.0f} "
                  f"{f['syncs']:6.0f}", flush=True)


if __name__ == "__main__":
    main()
