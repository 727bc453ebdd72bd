"""Training and evaluation entry point: `python -m detr_full.train [--flags]` (the official `main.py`).

Every official flag exists with its default (generated from `TrainConfig`), so for instance
    python -m detr_full.train --coco_path /data/coco --output_dir runs/r50
    python -m detr_full.train --coco_path /data/coco --eval --resume detr-r50-e632da11.pth
    torchrun --nproc_per_node 8 -m detr_full.train --coco_path /data/coco --output_dir runs/r50
`--resume` also takes a URL (https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth).
From a notebook: `main(TrainConfig(...))` returns the last epoch's stats.

Differences from the official `main.py`:
- Without `--coco_path`, the synthetic shapes dataset (data/shapes, generated on first use) is used.
- `num_classes` comes from the annotation file (max category id + 1: 91 on COCO, as the official
  hard-coded value) unless `--num_classes` is passed explicitly.
- `--device auto` (default) picks CUDA when available; distributed runs use gloo on CPU.
- Resume is exact: checkpoints also hold the RNG states of every process (`rng`; rng.py) and
  the warm-up state (`warmup`), the training order depends only on `--seed` and the epoch
  (data/loaders.py), and evaluation leaves the RNG untouched. Resuming at an epoch boundary
  reproduces an uninterrupted run bit for bit (CPU, `num_workers` unchanged). `args` is a plain
  dict and `categories` ({id: name}) is added, so checkpoints load with
  `torch.load(weights_only=True)` and `predict.py` can name classes.
- `--finetune_from CKPT` loads weights only and drops those whose shape differs (class head,
  queries); `--warmup_steps N` adds a linear lr warm-up over the first N iterations (optim.py).
- `--ema_decay D` (e.g. 0.999) evaluates a moving average of the weights (ema.py); its checkpoints
  hold the average as `model` and the trained weights as `raw_model`, which a resume continues.
- A non-finite loss stops training with a clear message (exit code 1) and leaves the last good
  checkpoint in place; bad input (dataset, checkpoint, unsupported flag) exits with code 2.
- `eval.pth` / `eval/*.pth` hold the COCOeval.eval dict with numpy arrays turned into tensors and
  `params` into a dict, so they too load with `weights_only=True`.
- `plots.png` (loss / class error / AP50 curves) is rewritten after every epoch.
- Not supported: `--masks`, `--frozen_weights`, `--dataset_file coco_panoptic`.
Everything built before the first step (data, class count, backbone, model, optimizer, schedule)
comes from run_setup.py; this file is the CLI and the epoch loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from detr_full.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from detr_full.config import RECIPES, ConfigError, TrainConfig, config_from_args
from detr_full.cuda_graphs import GraphedDETR
from detr_full.data.coco import DatasetError, coco_api
from detr_full.diagnostics import MatchingMonitor
from detr_full.distributed import all_gather_object, get_rank, get_world_size, init_distributed, is_main_process
from detr_full.ema import evaluated_model, weight_ema
from detr_full.engine import NonFiniteLossError, evaluate, train_one_epoch
from detr_full.rng import capture_rng_state, restore_rng_state
from detr_full.run_setup import resolve_device, setup_run
from detr_full.viz import plot_logs


def _plain(obj: Any) -> Any:
    """numpy arrays -> tensors, numpy scalars -> Python numbers, objects -> dicts (for weights_only)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: _plain(v) for k, v in vars(obj).items()}
    return obj


def coco_eval_record(coco_eval) -> dict:
    """`COCOeval.eval` (params, counts, date, precision, recall, scores) plus `stats`, loadable safely."""
    return {**_plain(coco_eval.eval), "stats": [float(x) for x in coco_eval.stats]}


def _prefixed(prefix: str, stats: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in stats.items()}


def run_progress(elapsed: float, epoch_seconds: list[float], done: int, epochs: int) -> str:
    """One line on the whole run: epochs done, time since the run started (data and backbone
    pretraining included), and the time left at the mean of the epochs timed so far."""
    def clock(seconds: float) -> str:
        return str(datetime.timedelta(seconds=round(seconds)))
    left = (epochs - done) * sum(epoch_seconds) / len(epoch_seconds)
    return f"Run: epoch {done}/{epochs} done, {clock(elapsed)} elapsed, " + \
        (f"about {clock(left)} left" if done < epochs else "finished")


def _evaluate_extra(run, model: nn.Module, distributed: bool) -> dict:
    """The extra val split's stats (cfg.extra_val), {} when there is none."""
    if run.extra_val_set is None:
        return {}
    stats, _ = evaluate(model, run.criterion, run.postprocess, run.val_loader(distributed, run.extra_val_set),
                        coco_api(run.extra_val_set), run.device, amp=run.cfg.amp, progress=False)
    return stats


def _extra_line(cfg: TrainConfig, extra: dict) -> str:
    return f"; {cfg.extra_val}: {_ap_line(extra)}" if extra else ""


def _ap_line(stats: dict) -> str:
    s = stats.get("coco_eval_bbox")
    return f"AP {s[0]:.3f}  AP50 {s[1]:.3f}  AP75 {s[2]:.3f}" if s else "no COCO evaluation"


# --------------------------------------------------------------------------- main

def main(cfg: TrainConfig, derive_num_classes: Optional[bool] = None) -> dict:
    """Train (or with `cfg.eval` only evaluate) as the official main.py; return the last stats.

    `derive_num_classes`: take num_classes from the annotation file (max category id + 1).
    None (default) derives it when `cfg.num_classes` is left at its default 91 — on COCO the
    derivation gives 91 as well — and the CLI passes False when `--num_classes` is given.
    Returned dict: the last `log.txt` entry (`train_*`, `test_*`, `epoch`, `n_parameters`), or
    `test_*` and `n_parameters` with `cfg.eval`. Raises NonFiniteLossError, DatasetError,
    CheckpointError or ConfigError; the CLI turns them into exit codes 1 and 2.
    """
    device = resolve_device(cfg.device)
    already_distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    distributed = init_distributed(device.type)
    try:
        return _run(cfg, device, distributed, derive_num_classes)
    finally:
        if distributed and not already_distributed:
            torch.distributed.destroy_process_group()


def _run(cfg: TrainConfig, device: torch.device, distributed: bool, derive_num_classes: Optional[bool]) -> dict:
    run_start = time.time()                     # the whole run's clock: data, pretraining, epochs, evaluations
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    main_process = is_main_process()
    log = print if main_process else (lambda *a, **k: None)
    run = setup_run(cfg, derive_num_classes, device, log=log)
    cfg, model_without_ddp, criterion, postprocess = run.cfg, run.model, run.criterion, run.postprocess
    optimizer, lr_scheduler, warmup = run.optimizer, run.lr_scheduler, run.warmup
    coco_gt = coco_api(run.val_set)
    model = model_without_ddp
    if cfg.cuda_graphs and device.type == "cuda" and not distributed:
        model = GraphedDETR(model_without_ddp)
    elif cfg.cuda_graphs:
        log("Note: --cuda_graphs needs one CUDA device (no torchrun); training runs eagerly.")
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n_parameters = sum(p.numel() for p in model_without_ddp.parameters() if p.requires_grad)
    log(f"detr-course: {cfg.backbone}, {cfg.enc_layers}+{cfg.dec_layers} layers, hidden {cfg.hidden_dim}, "
        f"{cfg.num_queries} queries, num_classes {cfg.num_classes}; {n_parameters:,} trainable parameters; "
        f"device {device}, {get_world_size()} process(es)")

    output_dir = Path(cfg.output_dir) if cfg.output_dir else None
    if output_dir is not None and main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    start_epoch, rng_to_restore = cfg.start_epoch, None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, map_location="cpu")
        # A run with weight EMA saved the average as `model` and the weights it trains as `raw_model`.
        trained = "model" if cfg.eval or "raw_model" not in ckpt else "raw_model"
        load_model_weights(model_without_ddp, ckpt[trained], source=cfg.resume)
        if not cfg.eval and all(k in ckpt for k in ("optimizer", "lr_scheduler", "epoch")):
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            start_epoch = int(ckpt["epoch"]) + 1
            if "warmup" in ckpt:
                warmup.load_state_dict(ckpt["warmup"])
            else:  # an official checkpoint: its lr is already past any warm-up
                warmup.step_count = warmup.warmup_steps
            rng = ckpt.get("rng")
            if isinstance(rng, list) and len(rng) == get_world_size():
                rng_to_restore = rng[get_rank()]
            else:
                log("Note: the checkpoint has no RNG state for this number of processes; resuming with fresh "
                    "random streams (the run will not repeat an uninterrupted one bit for bit).")
        log(f"Resumed from {cfg.resume}" + ("" if cfg.eval else f" at epoch {start_epoch}"))
    elif cfg.finetune_from:
        ckpt = load_checkpoint(cfg.finetune_from, map_location="cpu")
        dropped = load_model_weights(model_without_ddp, ckpt["model"], finetune=True, source=cfg.finetune_from)
        log(f"Fine-tuning from {cfg.finetune_from}; "
            + (f"dropped (shape differs or not in this model, freshly initialised): {', '.join(dropped)}"
               if dropped else "all weights loaded"))

    if cfg.eval:
        stats, coco_eval = evaluate(model, criterion, postprocess, run.val_loader(distributed), coco_gt, device,
                                    amp=cfg.amp)
        extra = _evaluate_extra(run, model, distributed)
        log(f"Evaluation: loss {stats.get('loss', float('nan')):.4f}, {_ap_line(stats)}{_extra_line(cfg, extra)}")
        if output_dir is not None and main_process and coco_eval is not None:
            save_checkpoint(coco_eval_record(coco_eval), output_dir / "eval.pth")
        return {**_prefixed("test", stats), **_prefixed(cfg.extra_val, extra), "n_parameters": n_parameters}

    ema = weight_ema(model_without_ddp, cfg.ema_decay)
    if ema is not None and cfg.resume and "raw_model" in ckpt:
        ema.load(ckpt["model"], ckpt["ema_updates"])
    elif ema is not None and cfg.resume:
        log(f"Note: {cfg.resume} has no weight average (it was trained without --ema_decay); the average "
            "starts from its weights.")
    evaluated = evaluated_model(model, ema)    # the model whose AP is logged and saved as `model`

    if rng_to_restore is not None:
        restore_rng_state(rng_to_restore)
    log("Start training")
    start_time = time.time()
    epoch_seconds: list[float] = []
    last: dict = {}
    monitor = MatchingMonitor() if cfg.diagnostics else None     # kept across the run's evaluations
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.time()
        loader = run.train_loader(epoch, distributed)
        if len(loader) == 0:
            raise ConfigError(f"The training set has {len(run.train_set)} image(s) per process, fewer than "
                              f"--batch_size {cfg.batch_size}; with drop_last there is no batch to train on. "
                              "Lower --batch_size.")
        train_stats = train_one_epoch(model, criterion, loader, optimizer, device, epoch, cfg.clip_max_norm,
                                      scheduler_step=warmup.step if cfg.warmup_steps > 0 else None, amp=cfg.amp,
                                      log_every=run.log_every, ema=ema)
        lr_scheduler.step()

        # Evaluation must not shift the random streams, or a resumed run (which skips it) would differ.
        rng = all_gather_object(capture_rng_state())
        if output_dir is not None and main_process:
            ckpt = {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch, "args": dataclasses.asdict(cfg),
                    "rng": rng, "warmup": warmup.state_dict(), "categories": run.categories}
            if ema is not None:
                ckpt.update(model=ema.module.state_dict(), raw_model=ckpt["model"], ema_updates=ema.updates)
            save_checkpoint(ckpt, output_dir / "checkpoint.pth")
            if (epoch + 1) % cfg.lr_drop == 0 or (epoch + 1) % 100 == 0:
                save_checkpoint(ckpt, output_dir / f"checkpoint{epoch:04}.pth")

        test_stats, coco_eval = evaluate(evaluated, criterion, postprocess, run.val_loader(distributed), coco_gt,
                                         device, amp=cfg.amp, monitor=monitor)
        extra = _evaluate_extra(run, evaluated, distributed)
        restore_rng_state(rng[get_rank()])
        last = {**_prefixed("train", train_stats), **_prefixed("test", test_stats), **_prefixed(cfg.extra_val, extra),
                "epoch": epoch, "n_parameters": n_parameters}
        log(f"Epoch {epoch}: train loss {train_stats['loss']:.4f}, "
            f"test loss {test_stats.get('loss', float('nan')):.4f}, {_ap_line(test_stats)}{_extra_line(cfg, extra)}")
        if output_dir is not None and main_process:
            with (output_dir / "log.txt").open("a") as f:
                f.write(json.dumps(last) + "\n")
            if coco_eval is not None:
                record = coco_eval_record(coco_eval)
                save_checkpoint(record, output_dir / "eval" / "latest.pth")
                if epoch % 50 == 0:
                    save_checkpoint(record, output_dir / "eval" / f"{epoch:03}.pth")
            plot_logs([output_dir], out=output_dir / "plots.png")
        epoch_seconds.append(time.time() - epoch_start)
        log(run_progress(time.time() - run_start, epoch_seconds, epoch + 1, cfg.epochs))
    if start_epoch >= cfg.epochs:
        log(f"Nothing to train: the run is already at epoch {start_epoch} of --epochs {cfg.epochs}.")
    log(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}")
    return last


# --------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str]) -> tuple[TrainConfig, bool]:
    """Flags from the TrainConfig fields; also whether `--num_classes` was passed explicitly."""
    argv = list(argv)
    recipe_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    recipe_parser.add_argument("--recipe", choices=sorted(RECIPES))
    recipe = recipe_parser.parse_known_args(argv)[0].recipe
    parser = argparse.ArgumentParser(
        prog="python -m detr_full.train", allow_abbrev=False,  # no abbreviations: --num_classes detection is exact
        description="Train or evaluate DETR (flags and defaults of the official main.py).")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="start from a named recipe's values instead of the official defaults; "
                             "other flags still override them (shapes_cpu: DETR on shapes from a ResNet-18 pretrained "
                             "on their crops, frozen, in minutes on 2 CPU cores; shapes_imagenet: the same from "
                             "the ImageNet MobileNetV2, 8 epochs instead of 12; trees_cpu: aerial tree crowns)")
    cfg = config_from_args(TrainConfig, argv, parser=parser, defaults=RECIPES[recipe]() if recipe else None)
    given = any(a == "--num_classes" or a.startswith("--num_classes=") for a in argv)
    return cfg, given


def cli(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, num_classes_given = parse_args(argv)
    if cfg.backbone_in_loader and cfg.num_workers > 0 and "OMP_NUM_THREADS" not in os.environ:
        # the workers run the ResNet on their own cores: more torch threads here would compete with them
        # (measured: benchmarks/backbone_in_loader.py)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.num_workers))
    try:
        main(cfg, derive_num_classes=not num_classes_given)
    except NonFiniteLossError as e:
        print(f"\nTraining stopped: {e}\nThe last good checkpoint (if any) is untouched.", file=sys.stderr)
        return 1
    except (DatasetError, CheckpointError, ConfigError, FileExistsError) as e:  # FileExistsError: ensure_shapes
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
