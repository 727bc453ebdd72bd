"""Compare DETR training recipes on a data set (shapes by default, or a recipe's) under a fixed time or step budget.

Not a test: a probe used to choose `detr_full.config.shapes_cpu_recipe`. It trains with the same
pieces as `python -m detr_full.train` (dataset, loader, optimizer groups, warm-up, engine) but
stops after `--seconds` of training or `--steps` iterations, then runs one COCO evaluation on
the val split (and the recipe's `extra_val` split, if any) and appends a JSON line (config, steps, wall-clock, CPU time, AP, AP50) to `--results`.
`--eval_every N` also evaluates every N steps: the AP50 curve against steps and CPU minutes
(evaluation time excluded from the clocks). With `--pretrained_backbone pretrain` the backbone
pretraining runs first (into `--pretrain_cache`, a fresh folder by default, so it is timed) and its
wall-clock and CPU time are recorded and counted in the curve's minutes.

    python benchmarks/shapes_recipe.py --name bn_stem --seconds 240 --recipe \\
        --lr 1e-3 --num_queries 20          # the recipe, with overrides

    python benchmarks/shapes_recipe.py --name trees --steps 1500 --eval_every 250 --recipe trees_cpu \\
        --num_workers 0 --threads 1 --seed 1   # a 1-thread probe: its CPU minutes are all in this process

Every `TrainConfig` field is a flag (defaults: the official ones, or the recipe's with `--recipe [NAME]`,
NAME one of detr_full.config.RECIPES, shapes_cpu when left out).
`--drop_at` (fraction of the budget) divides all learning rates by 10 once, like the CLI's StepLR.
Measure on a quiet machine where possible: with 2 cores, one other busy process halves the speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

import torch

from detr_full.config import RECIPES, TrainConfig, add_config_arguments
from detr_full.data.coco import coco_api
from detr_full.ema import evaluated_model, weight_ema
from detr_full.engine import evaluate, train_one_epoch
from detr_full.run_setup import setup_run


class _Budget(Exception):
    pass


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--name", default="run")
    parser.add_argument("--seconds", type=float, default=0.0, help="training wall-clock budget (0 = steps only)")
    parser.add_argument("--steps", type=int, default=0, help="iteration budget (0 = time only)")
    parser.add_argument("--drop_at", type=float, default=0.0, help="lr / 10 after this budget fraction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="/tmp/shapes_recipe.jsonl")
    parser.add_argument("--recipe", nargs="?", const="shapes_cpu", choices=sorted(RECIPES),
                        help="start from this recipe (alone: shapes_cpu)")
    parser.add_argument("--eval_every", type=int, default=0, help="also evaluate every N steps (0: at the end only)")
    parser.add_argument("--pretrain_cache", default="", help="pretrained-backbone cache (default: a fresh temp folder)")
    pre, _ = parser.parse_known_args(argv)
    base = RECIPES[pre.recipe]() if pre.recipe else TrainConfig()
    # the recipe's values become the flag defaults
    add_config_arguments(parser, TrainConfig)
    parser.set_defaults(**dataclasses.asdict(base))
    ns = parser.parse_args(argv)
    if not ns.seconds and not ns.steps:
        parser.error("give a budget: --seconds and/or --steps (the run stops at whichever comes first)")
    cfg = TrainConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)})
    torch.set_num_threads(ns.threads)
    run = setup_run(cfg, pretrain_cache=ns.pretrain_cache or tempfile.mkdtemp(prefix="pretrain-probe-"))
    pretrain_wall, pretrain_cpu = run.pretrain_wall_s, run.pretrain_cpu_s
    if pretrain_wall:
        print(f"[{ns.name}] pretraining: {pretrain_wall:.0f} s wall, {pretrain_cpu:.0f} s CPU", flush=True)
    cfg, model, criterion, postprocess = run.cfg, run.model, run.criterion, run.postprocess
    optimizer, warmup, ds_val = run.optimizer, run.warmup, run.val_set
    ema = weight_ema(model, cfg.ema_decay)
    evaluated = evaluated_model(model, ema)     # --ema_decay: the points are the average's
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[{ns.name}] {n_params:,} trainable parameters", flush=True)

    start, cpu0, steps, dropped = time.perf_counter(), time.process_time(), 0, False
    paused_wall = paused_cpu = 0.0  # time spent in the intermediate evaluations, kept off the clocks
    history: list[dict] = []
    curve: list[dict] = []

    def run_eval() -> dict:
        stats, _ = evaluate(evaluated, criterion, postprocess, run.val_loader(), coco_api(ds_val), "cpu",
                            progress=False)
        ap = stats["coco_eval_bbox"]
        point = {"AP": round(ap[0], 4), "AP50": round(ap[1], 4), "APs": round(ap[3], 4), "APm": round(ap[4], 4),
                 "APl": round(ap[5], 4), "val_loss": round(stats["loss"], 3),
                 "val_class_error": round(stats["class_error"], 1)}
        if run.extra_val_set is not None:                  # e.g. the trees' other sites
            extra, _ = evaluate(evaluated, criterion, postprocess, run.val_loader(dataset=run.extra_val_set),
                                coco_api(run.extra_val_set), "cpu", progress=False)
            point.update({f"{cfg.extra_val}_AP": round(extra["coco_eval_bbox"][0], 4),
                          f"{cfg.extra_val}_AP50": round(extra["coco_eval_bbox"][1], 4)})
        return point

    def clocks() -> dict:
        wall = time.perf_counter() - start - paused_wall
        cpu = time.process_time() - cpu0 - paused_cpu
        return {"step": steps, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
                "total_wall_min": round((wall + pretrain_wall) / 60, 2),
                "total_cpu_min": round((cpu + pretrain_cpu) / 60, 2)}
    window: list[dict[str, float]] = []

    def record_losses(module, args, loss_dict) -> None:  # criterion forward hook: per-step terms
        if module.training:
            window.append({k: float(v.detach()) for k, v in loss_dict.items() if k in ("loss_ce", "loss_bbox", "loss_giou",
                                                                                 "class_error")})

    criterion.register_forward_hook(record_losses)

    def after_step() -> None:
        nonlocal steps, dropped, paused_wall, paused_cpu
        warmup.step()
        if ema is not None:
            ema.update()
        steps += 1
        if ns.eval_every and steps % ns.eval_every == 0 and not (ns.steps and steps >= ns.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            curve.append({**clocks(), **run_eval()})
            print(f"[{ns.name}] eval {curve[-1]}", flush=True)
            model.train()
            criterion.train()
            paused_wall += time.perf_counter() - t0
            paused_cpu += time.process_time() - c0
        if steps % 50 == 0:
            mean = {k: round(sum(w[k] for w in window) / len(window), 3) for k in window[0]}
            history.append({"step": steps, "s": round(time.perf_counter() - start), **mean})
            print(f"[{ns.name}] {history[-1]}", flush=True)
            window.clear()
        elapsed = time.perf_counter() - start - paused_wall
        frac = max(elapsed / ns.seconds if ns.seconds else 0.0, steps / ns.steps if ns.steps else 0.0)
        if ns.drop_at and not dropped and frac >= ns.drop_at:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
            warmup.base_lrs = [b * 0.1 for b in warmup.base_lrs]
            dropped = True
        if frac >= 1.0:
            raise _Budget

    epoch = 0
    try:
        while True:
            batches = run.train_loader(epoch)
            stats = train_one_epoch(model, criterion, batches, optimizer, "cpu", epoch, cfg.clip_max_norm,
                                    scheduler_step=after_step, progress=False)
            print(f"[{ns.name}] epoch {epoch} done at step {steps}: loss {stats['loss']:.3f}", flush=True)
            epoch += 1
    except _Budget:
        pass
    final = clocks()
    t0 = time.perf_counter()
    curve.append({**final, **run_eval()})
    eval_wall = time.perf_counter() - t0
    record = {"name": ns.name, **curve[-1], "pretrain_wall_s": round(pretrain_wall, 1),
              "pretrain_cpu_s": round(pretrain_cpu, 1), "eval_wall_s": round(eval_wall, 1),
              "img_per_s": round(steps * cfg.batch_size / final["train_wall_s"], 2), "curve": curve,
              "history": history, "drop_at": ns.drop_at, "config": dataclasses.asdict(cfg)}
    print(json.dumps({k: v for k, v in record.items() if k not in ("config", "history", "curve")}), flush=True)
    with open(ns.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
