"""A learning curve: train a config for a fixed number of steps and evaluate it every few steps.

What the notebooks and `benchmarks/successor_fixes.py` use to put DETR and its successors' fixes
side by side on the same data, seed and step budget. It trains what `python -m detr_full.train`
would (the same run setup, loader and `train_one_epoch`), without checkpoints or a StepLR drop,
and at every evaluation records
- `AP`, `AP50` (pycocotools) on the first `val_images` val images;
- the diagnosis numbers of diagnostics.py: `matching_instability` (%, from the second evaluation
  on), `box_spread`, and `val_class_error`, the class error of the matched queries;
- `train_class_error` and `train_loss`, averaged over the steps since the previous evaluation;
- `cpu_min`: this process's CPU time spent training so far (evaluations excluded), and `wall_min`.
Run it with `num_workers=0` for honest CPU minutes: a loader process's time is not this process's.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import time
from typing import Iterator, Optional

from torch import nn
from torch.utils.data import Subset

from detr_full.config import TrainConfig
from detr_full.data.coco import coco_api
from detr_full.diagnostics import MatchingMonitor
from detr_full.ema import evaluated_model, weight_ema
from detr_full.engine import evaluate, train_one_epoch
from detr_full.rng import capture_rng_state, restore_rng_state
from detr_full.run_setup import Run, setup_run


def _batches(run: Run) -> Iterator:
    """The training batches of epoch 0, then epoch 1, ...: the order `python -m detr_full.train` uses."""
    for epoch in itertools.count():
        yield from run.train_loader(epoch)


def learning_curve(cfg: TrainConfig, steps: int, eval_every: int, val_images: Optional[int] = None,
                   progress: bool = False, matcher: Optional[nn.Module] = None,
                   keep: Optional[dict] = None) -> list[dict]:
    """Train `cfg` (on `cfg.coco_path`, or data/shapes) for `steps` iterations on `cfg.device`;
    evaluate at step 0, every `eval_every` steps and at the end. Returns one dict per evaluation
    (keys in the module docstring). `cfg.pretrained_backbone="pretrain"` uses the cached pretraining
    (made first when missing; its time is not counted). `matcher` replaces the criterion's
    Hungarian matcher, in training and in the val losses (an experiment: notebook 13). `keep`, a
    dict, receives the trained `model` (with `cfg.ema_decay`: the weight average, which the curve
    evaluates), `criterion`, `postprocess`, the `val_set` and `cfg` at the end."""
    if steps < 1 or eval_every < 1:
        raise ValueError(f"learning_curve needs steps >= 1 and eval_every >= 1; got {steps} and {eval_every}.")
    run = setup_run(cfg, log=lambda message: None)
    cfg, model, criterion, postprocess, device = run.cfg, run.model, run.criterion, run.postprocess, run.device
    ds_val = run.val_set if val_images is None else Subset(run.val_set, range(min(val_images, len(run.val_set))))
    if matcher is not None:
        criterion.matcher = matcher
    monitor, coco_gt, batches = MatchingMonitor(), coco_api(ds_val), _batches(run)
    ema = weight_ema(model, cfg.ema_decay)
    evaluated = evaluated_model(model, ema)     # with ema_decay the curve is the average's
    curve: list[dict] = []
    cpu = wall = 0.0
    done, train_stats = 0, {}
    while True:
        rng = capture_rng_state()       # evaluating must not shift the training's random streams
        with contextlib.redirect_stdout(io.StringIO()):                   # pycocotools' 12-line summary
            stats, coco_eval = evaluate(evaluated, criterion, postprocess, run.val_loader(dataset=ds_val),
                                        coco_gt, device, progress=False, monitor=monitor)
        restore_rng_state(rng)
        point = {"step": done, "cpu_min": cpu / 60, "wall_min": wall / 60, "AP": coco_eval.stats[0],
                 "AP50": coco_eval.stats[1], "val_class_error": stats["class_error"], "val_loss": stats["loss"],
                 "box_spread": stats["box_spread"], "matching_instability": stats.get("matching_instability")}
        if train_stats:
            point.update(train_loss=train_stats["loss"], train_class_error=train_stats["class_error"])
        curve.append(point)
        if progress:
            unstable = point["matching_instability"]
            print(f"step {done:4d}  AP50 {point['AP50']:.3f}  class error (val) {point['val_class_error']:5.1f} %  "
                  f"matching instability {'  -  ' if unstable is None else f'{unstable:5.1f}'} %  box spread "
                  f"{point['box_spread']:.3f}  ({point['cpu_min']:.1f} CPU min)", flush=True)
        if done == steps:
            if keep is not None:
                keep.update(model=evaluated, criterion=criterion, postprocess=postprocess, val_set=ds_val, cfg=cfg)
            return curve
        n = min(eval_every, steps - done)
        c0, w0 = time.process_time(), time.perf_counter()
        train_stats = train_one_epoch(model, criterion, itertools.islice(batches, n), run.optimizer, device, epoch=0,
                                      max_norm=cfg.clip_max_norm, scheduler_step=run.warmup.step, progress=False,
                                      log_every=run.log_every, ema=ema)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        done += n
