"""One training epoch and one evaluation pass (the official `engine.py`).

Differences from the official code:
- A tqdm progress bar (loss / class_error / lr) replaces `MetricLogger.log_every`; the returned
  numbers are the same: global averages over iterations of `loss`, the weighted terms, every
  criterion output as `{k}_unscaled`, `class_error` and `lr`.
- A non-finite loss raises `NonFiniteLossError` (naming the bad terms) instead of `sys.exit(1)`,
  so the caller decides what to keep; `train.py` leaves the last good checkpoint in place.
- `log_every` > 1 (what a GPU run uses): the logged values add up on the device and are read every
  `log_every` steps, so that the host does not wait for the device at every step. A fused AdamW then
  skips a step whose loss is not finite on the device itself (its `found_inf`), and the error is
  raised at the next read; with another optimizer the loss's finiteness is read at every step.
- Evaluation gathers COCO-format detections to rank 0 and runs one plain pycocotools `COCOeval`
  (the official `CocoEvaluator` runs a print-free copy of `evaluate()` per batch, then merges).
  Evaluation with no detections at all gives zero / -1 stats instead of crashing in `loadRes`.
- Optional bf16 autocast (`amp=True`) around the model; the loss is computed in float32.
- Batches are `(images, padding_mask, targets)` tuples, not `NestedTensor`s.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from tqdm.auto import tqdm

from detr_full.diagnostics import MatchingMonitor
from detr_full.distributed import (all_gather_object, all_reduce_sum, get_world_size, is_main_process,
                                   reduce_mean_dict)
from detr_full.ema import WeightEMA
from detr_full.matcher import NonFiniteCostError


class NonFiniteLossError(RuntimeError):
    """The loss (or the model's outputs) became NaN or infinite; the step was not taken."""


class _Averager:
    """Running sums of named scalars; `averages()` gives the global average over all processes.

    Each `update` counts one iteration, like the official `SmoothedValue.global_avg`.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, **values: float) -> None:
        for k, v in values.items():
            self.add(k, float(v), 1)

    def add(self, key: str, total: float, count: int) -> None:
        """`count` iterations whose values of `key` sum to `total`."""
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def averages(self) -> dict[str, float]:
        # Every rank must contribute the same keys in the same order: gather the key lists first
        # (cheap), so a rank that saw no batch at all still takes part in the all_reduce.
        keys = sorted(set().union(*all_gather_object(sorted(self.sums))))
        if not keys:
            return {}
        sums = torch.tensor([self.sums.get(k, 0.0) for k in keys], dtype=torch.float64)
        counts = torch.tensor([float(self.counts.get(k, 0)) for k in keys], dtype=torch.float64)
        totals = all_reduce_sum(torch.stack([sums, counts]))  # (2, n_keys)
        return {k: (s / c if c > 0 else float("nan")) for k, s, c in zip(keys, *totals.tolist())}


def _autocast(device: torch.device, enabled: bool, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast; `cache=False` for a model whose forward is recorded as a CUDA graph (cuda_graphs.py)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def _to_float32(outputs: Any) -> Any:
    """Cast every floating tensor of a (nested) model output to float32 for the loss."""
    if isinstance(outputs, Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float32(v) for v in outputs)
    return outputs


def _to_device(batch: tuple[Tensor, Tensor, list[dict[str, Tensor]]], device: torch.device):
    images, padding_mask, targets = batch
    non_blocking = device.type == "cuda"
    images = images.to(device, non_blocking=non_blocking)
    padding_mask = padding_mask.to(device, non_blocking=non_blocking)
    targets = [{k: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
                for k, v in t.items()} for t in targets]
    return images, padding_mask, targets


def _named_tensors(outputs: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    if isinstance(outputs, Tensor):
        return [(prefix, outputs)]
    if isinstance(outputs, dict):
        return [nt for k, v in outputs.items() for nt in _named_tensors(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(outputs, (list, tuple)):
        return [nt for i, v in enumerate(outputs) for nt in _named_tensors(v, f"{prefix}[{i}]")]
    return []


def _check_finite_outputs(outputs: dict, where: str) -> None:
    """Raise NonFiniteLossError when a model output is NaN/inf (the matcher would fail obscurely).

    The verdict is shared by all processes, so none is left waiting in the criterion's all_reduce.
    """
    named = [(k, t) for k, t in _named_tensors(outputs) if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).float()   # (n_outputs,)
    num_bad = (finite < 1).sum().reshape(1).float().cpu()
    if all_reduce_sum(num_bad).item() == 0:
        return
    bad = [k for (k, _), ok in zip(named, finite.tolist()) if not ok]
    raise NonFiniteLossError(
        f"Non-finite model outputs {where}: {bad or '(on another process)'}; the weights have diverged. "
        f"{_ADVICE}")


_ADVICE = ("Try a lower --lr (or a --warmup_steps warm-up), keep gradient clipping on (--clip_max_norm), "
           "and check the data for degenerate boxes (zero width/height, outside the image).")


def _forward(model: nn.Module, images: Tensor, padding_mask: Tensor, targets: list[dict]) -> dict:
    """The model's outputs; a model that `reads_targets` in training is also given them (a successor's
    denoising queries are made from the ground truth)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if getattr(inner, "reads_targets", False):
        return model(images, padding_mask, targets)
    return model(images, padding_mask)


def _weighted_terms(loss_dict: dict[str, Tensor], weight_dict: dict[str, float]) -> dict[str, Tensor]:
    # class_error and cardinality_error have no weight: logged, never optimised (official behaviour)
    return {k: v * weight_dict[k] for k, v in loss_dict.items() if k in weight_dict}


class _DeviceLog:
    """The logged values of the steps since the last read, summed on the device (`log_every` > 1)."""

    def __init__(self) -> None:
        self.keys: Optional[list[str]] = None
        self.sums: Optional[Tensor] = None
        self.lrs: list[float] = []                   # the lr is known on the host
        self.first_bad: Optional[Tensor] = None      # the first step of the window whose loss was not finite, or -1

    def add(self, values: dict[str, Tensor], finite: Tensor, step: int, lr: float) -> None:
        keys = sorted(values)
        stacked = torch.stack([values[k].detach().reshape(()).double() for k in keys])   # (n_keys,)
        if self.sums is None:
            self.keys, self.sums = keys, stacked
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=stacked.device)
        else:
            self.sums = self.sums + stacked
        self.first_bad = torch.where(~finite & (self.first_bad < 0), step, self.first_bad)
        self.lrs.append(lr)

    def read(self) -> tuple[dict[str, float], int, list[float], int]:
        """-> the sums per key, the number of steps, their lrs, the first non-finite step (-1: none); resets."""
        values = dict(zip(self.keys, self.sums.tolist())) if self.sums is not None else {}   # the one read
        first_bad = int(self.first_bad) if self.first_bad is not None else -1
        lrs = self.lrs
        self.__init__()
        return values, len(lrs), lrs, first_bad


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, epoch: int, max_norm: float = 0.0,
                    scheduler_step: Optional[Callable[[], Any]] = None, amp: bool = False,
                    progress: bool = True, log_every: int = 1, ema: Optional[WeightEMA] = None) -> dict[str, float]:
    """Train for one pass over `loader`; return global averages of the logged values.

    `loader` yields `(images (B,3,H,W), padding_mask (B,H,W) True on padding, targets)`, targets with
    `labels` (T,) and `boxes` (T,4) normalised cxcywh. `scheduler_step` (e.g. a warm-up) is called
    after every optimizer step, then `ema.update()` (the weight average, ema.py). Returned keys:
    `loss`, the weighted terms (`loss_ce`, ...), `{k}_unscaled` for every criterion output,
    `class_error`, `lr`. `log_every`: read the logged values back from the device every this many
    steps (1: every step, and every check before the update).
    Raises `NonFiniteLossError` when the outputs or the loss are NaN/inf; the update of that step is
    never applied.
    """
    device = torch.device(device)
    model.train()
    criterion.train()
    weight_dict = criterion.weight_dict
    meters = _Averager()
    window = _DeviceLog()
    skips_on_device = log_every > 1 and bool(optimizer.defaults.get("fused"))   # found_inf: a fused AdamW's skip
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    cache_casts = not getattr(inner, "uses_graphs", False)
    bar = tqdm(loader, desc=f"Epoch {epoch}", disable=not (progress and is_main_process()), dynamic_ncols=True)
    try:
        for it, batch in enumerate(bar):
            where = f"at epoch {epoch}, iteration {it}"
            images, padding_mask, targets = _to_device(batch, device)
            with _autocast(device, amp, cache_casts):
                outputs = _to_float32(_forward(model, images, padding_mask, targets))
            if log_every == 1:
                _check_finite_outputs(outputs, where)
            try:
                loss_dict = criterion(outputs, targets)
            except NonFiniteCostError as e:                 # the matching read the outputs: they are not finite
                raise NonFiniteLossError(f"Non-finite model outputs {where}: {e} {_ADVICE}") from None
            loss = sum(_weighted_terms(loss_dict, weight_dict).values())
            lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (differs from after it during warm-up)

            if log_every == 1:
                # Decide on what all ranks see (the official reduce_dict): they all stop together.
                reduced = reduce_mean_dict(loss_dict)
                reduced_scaled = _weighted_terms(reduced, weight_dict)
                loss_value = float(sum(reduced_scaled.values()))
                if not math.isfinite(loss_value):
                    bad = [k for k, v in reduced.items() if not math.isfinite(float(v))]
                    raise NonFiniteLossError(
                        f"Non-finite training loss {loss_value} {where}: non-finite terms "
                        f"{bad or '(none: the weighted sum overflowed)'}. The update was not applied. {_ADVICE}")
            else:
                finite = torch.isfinite(loss.detach())
                if get_world_size() > 1:                    # every rank skips, or none: the minimum
                    finite = all_reduce_sum((~finite).float().reshape(1))[0] == 0
                if skips_on_device:
                    optimizer.found_inf = (~finite).float()   # the fused step does nothing where it is 1
                elif not finite:                             # one read per step: no bad update is applied
                    raise NonFiniteLossError(f"Non-finite training loss {where}. The update was not applied. "
                                             f"{_ADVICE}")

            optimizer.zero_grad()
            loss.backward()
            if max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            if scheduler_step is not None:
                scheduler_step()
            if ema is not None:
                ema.update()

            if log_every == 1:
                class_error = float(reduced["class_error"]) if "class_error" in reduced else float("nan")
                meters.update(loss=loss_value, **{k: float(v) for k, v in reduced_scaled.items()},
                              **{f"{k}_unscaled": float(v) for k, v in reduced.items()},
                              class_error=class_error, lr=lr)
                bar.set_postfix(loss=f"{loss_value:.4f}", class_error=f"{class_error:.2f}", lr=f"{lr:.2e}",
                                refresh=False)
            else:
                window.add({"loss": loss, **{f"{k}_unscaled": v for k, v in loss_dict.items()},
                            **_weighted_terms(loss_dict, weight_dict)}, finite, it, lr)
                if (it + 1) % log_every == 0:
                    _read_window(window, meters, bar, epoch)
        if log_every > 1:
            _read_window(window, meters, bar, epoch)
    finally:
        bar.close()
        if skips_on_device:
            optimizer.found_inf = None                    # later steps (another loop's) are not to be skipped
    return meters.averages()


def _read_window(window: _DeviceLog, meters: _Averager, bar: tqdm, epoch: int) -> None:
    """Read a window of steps back from the device into the averages; raise if one was not finite."""
    sums, steps, lrs, first_bad = window.read()
    if not steps:
        return
    if first_bad >= 0:
        raise NonFiniteLossError(f"Non-finite training loss at epoch {epoch}, iteration {first_bad}; its update "
                                 f"was skipped, and the weights hold the last finite step's. {_ADVICE}")
    if get_world_size() > 1:
        keys = sorted(sums)
        totals = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)) / get_world_size()
        sums = dict(zip(keys, totals.tolist()))
    for k, total in sums.items():
        meters.add(k, total, steps)
    meters.add("class_error", sums.get("class_error_unscaled", float("nan") * steps), steps)
    meters.add("lr", sum(lrs), steps)
    bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}", lr=f"{lrs[-1]:.2e}", refresh=False)


def coco_results(results: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> dict[int, list[dict]]:
    """PostProcess outputs (absolute xyxy) -> {image_id: [COCO result dicts with xywh boxes]}."""
    per_image: dict[int, list[dict]] = {}
    for result, target in zip(results, targets):
        image_id = int(target["image_id"].reshape(-1)[0])
        boxes_xyxy = result["boxes"].float().cpu()
        boxes_xywh = torch.cat([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], dim=1)  # (Q, 4)
        per_image[image_id] = [
            {"image_id": image_id, "category_id": int(label), "bbox": [float(x) for x in box], "score": float(score)}
            for box, label, score in zip(boxes_xywh.tolist(), result["labels"].tolist(), result["scores"].tolist())
        ]
    return per_image


def run_coco_eval(coco_gt: COCO, detections: list[dict], image_ids: list[int]) -> COCOeval:
    """pycocotools bbox evaluation of COCO-format `detections` on `image_ids`; prints the summary.

    Returns the `COCOeval` (its `.stats` holds the 12 numbers). With no detections, `loadRes`
    would fail, so an empty result set is built by hand: AP/AR come out as 0 (or -1 without GT).
    """
    if detections:
        coco_dt = coco_gt.loadRes(detections)
    else:
        print("No detections: every AP/AR is 0 (or -1 where there is no ground truth).")
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                           "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
        coco_dt.createIndex()
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    coco_eval.params.imgIds = sorted(image_ids)  # only the images that were actually evaluated
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocess: Callable, loader: Iterable,
             coco_gt: Optional[COCO], device: torch.device | str, amp: bool = False,
             progress: bool = True, monitor: Optional[MatchingMonitor] = None
             ) -> tuple[dict[str, Any], Optional[COCOeval]]:
    """Losses and COCO bbox AP on `loader`. Returns `(stats, coco_eval)`.

    `stats` holds the averaged loss terms (same keys as training, without `lr`) and
    `coco_eval_bbox`, the 12 COCOeval stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
    ARm, ARl). `coco_eval` is the pycocotools `COCOeval` on rank 0, None on other ranks or when
    `coco_gt` is None (then COCO evaluation is skipped). Detections are scored at each target's
    `orig_size` (h, w), so they are comparable with the annotation file. With a `monitor`
    (diagnostics.py), stats also hold its `box_spread` and `matching_instability`.
    """
    device = torch.device(device)
    model.eval()
    criterion.eval()
    weight_dict = criterion.weight_dict
    meters = _Averager()
    detections: dict[int, list[dict]] = {}
    with tqdm(loader, desc="Eval", disable=not (progress and is_main_process()), dynamic_ncols=True) as bar:
        for batch in bar:
            images, padding_mask, targets = _to_device(batch, device)
            with _autocast(device, amp):
                outputs = _to_float32(model(images, padding_mask))
            _check_finite_outputs(outputs, "during evaluation")
            loss_dict = criterion(outputs, targets)
            reduced = reduce_mean_dict(loss_dict)
            reduced_scaled = _weighted_terms(reduced, weight_dict)
            loss_value = float(sum(reduced_scaled.values()))
            class_error = float(reduced["class_error"]) if "class_error" in reduced else float("nan")
            meters.update(loss=loss_value, **{k: float(v) for k, v in reduced_scaled.items()},
                          **{f"{k}_unscaled": float(v) for k, v in reduced.items()}, class_error=class_error)
            bar.set_postfix(loss=f"{loss_value:.4f}", class_error=f"{class_error:.2f}", refresh=False)
            if monitor is not None:
                monitor.update(outputs, targets, criterion.matcher(outputs, targets))

            if coco_gt is not None:
                orig_sizes = torch.stack([t["orig_size"] for t in targets]).to(device)  # (B, 2) as (h, w)
                detections.update(coco_results(postprocess(outputs, orig_sizes), targets))
    stats: dict[str, Any] = meters.averages()
    if monitor is not None:
        stats.update(monitor.summarize())

    coco_eval = None
    if coco_gt is not None:
        # A DistributedSampler pads the last round with repeated images: keep one copy per image.
        merged: dict[int, list[dict]] = {}
        for part in all_gather_object(detections):
            for image_id, dets in part.items():
                merged.setdefault(image_id, dets)
        bbox_stats = None
        if is_main_process():
            flat = [d for image_id in sorted(merged) for d in merged[image_id]]
            coco_eval = run_coco_eval(coco_gt, flat, list(merged))
            bbox_stats = [float(x) for x in np.asarray(coco_eval.stats).tolist()]
        stats["coco_eval_bbox"] = all_gather_object(bbox_stats)[0]  # rank 0's numbers everywhere
    return stats, coco_eval
