"""Checkers for the training notebooks: 07 (auxiliary losses), 08 (training on shapes),
09 (full COCO training) and 11 (fine-tuning on your data).

Each `check_*` calls the learner's function on a few small seeded cases, compares the answers with
`detr_full`, prints "OK: ..." or "not yet: <hint>", and returns True or False. A wrong answer, an
exception or an unfilled stub (returning None or raising NotImplementedError) never raises.

    check_loss_weights(fn)       fn(dec_layers, bbox_loss_coef, giou_loss_coef, aux_loss) -> weight_dict   (07)
    check_class_error(fn)        fn(pred_logits (B, Q, K), targets, indices) -> class_error in %          (08)
    check_cardinality_error(fn)  fn(pred_logits (B, Q, K), targets) -> cardinality_error                  (08)
    check_step_lr(fn)            fn(epoch, lr, lr_drop) -> the lr that epoch trains with                  (09)
    check_finetune_filter(fn)    fn(checkpoint_state_dict, model_state_dict) -> the entries that load     (11)

Dimension key: B batch, Q queries, K = num_classes + 1 (the last logit is "no object").
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from detr_full.checkpoint import load_model_weights
from detr_full.config import DETRConfig
from detr_full.criterion import SetCriterion
from detr_full.detr import loss_weights
from detr_full.matcher import HungarianMatcher
from detr_full.exercises.checking import call, verdict


def _number(x: Any) -> Optional[float]:
    """A Python float from a float, int or one-element tensor; None for anything else."""
    if isinstance(x, Tensor) and x.numel() == 1:
        return float(x)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None


# ----------------------------------------------------------------------------- 07: weight_dict

def check_loss_weights(fn: Callable[[int, float, float, bool], dict]) -> bool:
    """fn(dec_layers, bbox_loss_coef, giou_loss_coef, aux_loss) -> {loss name: weight}.

    Compared with `detr_full.detr.loss_weights(DETRConfig(...))`: `loss_ce` 1, `loss_bbox` and
    `loss_giou` their coefficients, and with aux_loss one `_i` copy of each for the readouts of
    decoder layers i = 0 .. dec_layers - 2 (the last layer's readout has no suffix).
    """
    name = "the weight_dict with its auxiliary `_i` copies matches detr_full.detr.loss_weights"
    for dec_layers, bbox, giou, aux in [(6, 5.0, 2.0, True), (3, 5.0, 2.0, True), (2, 1.5, 4.0, True),
                                        (1, 5.0, 2.0, True), (6, 5.0, 2.0, False)]:
        expected = loss_weights(DETRConfig(dec_layers=dec_layers, bbox_loss_coef=bbox, giou_loss_coef=giou,
                                           aux_loss=aux))
        out, error = call(fn, dec_layers, bbox, giou, aux)
        case = f"dec_layers={dec_layers}, aux_loss={aux}"
        if error:
            return verdict(False, f"{error}. Hint: start from the three final-layer terms, then add "
                            "`f'{k}_{i}'` copies for i in range(dec_layers - 1).")
        if not isinstance(out, dict):
            return verdict(False, f"expected a dict, got {type(out).__name__} ({case}).")
        missing = sorted(set(expected) - set(out))
        extra = sorted(set(out) - set(expected))
        if missing or extra:
            hint = f"for {case} the keys differ: missing {missing[:4]}, unexpected {extra[:4]}."
            if any(k.endswith(f"_{dec_layers - 1}") for k in extra):
                hint += " The last decoder layer is the main readout (no suffix): aux indices stop at dec_layers - 2."
            return verdict(False, hint)
        wrong = [k for k in expected if _number(out[k]) is None or not math.isclose(_number(out[k]), expected[k])]
        if wrong:
            k = wrong[0]
            return verdict(False, f"for {case}, {k} has weight {out[k]!r}, expected {expected[k]}: "
                            "every auxiliary copy keeps the weight of its final-layer term.")
    return verdict(True, name)


# ----------------------------------------------------------------------------- 08: logged errors

def _error_cases() -> list[tuple[dict, list[dict]]]:
    """Random outputs (B=3, Q=6, K=4+1) and targets, incl. an image without objects."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for counts in [(2, 3, 0), (1, 1, 1), (4, 0, 2)]:
        logits = torch.randn(3, 6, 5, generator=g) * 2                     # (B, Q, K)
        logits[:, :4, -1] += 3                                             # most queries say "no object"
        boxes = torch.rand(3, 6, 4, generator=g) * 0.4 + 0.2               # (B, Q, 4) cxcywh
        targets = [{"labels": torch.randint(0, 4, (n,), generator=g),
                    "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.2} for n in counts]
        cases.append(({"pred_logits": logits, "pred_boxes": boxes}, targets))
    # By hand: every query's argmax is "no object"; the matched one is still a classification error.
    logits = torch.tensor([[[0.0, 0, 0, 0, 5], [2, 0, 0, 0, 5], [0, 1, 0, 0, 5]]])        # (1, 3, 5)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}]
    cases.append(({"pred_logits": logits, "pred_boxes": boxes}, targets))
    return cases


def _criterion() -> SetCriterion:
    return SetCriterion(4, HungarianMatcher(1, 5, 2), {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})


def check_class_error(fn: Callable[[Tensor, list[dict], list[tuple[Tensor, Tensor]]], Any]) -> bool:
    """fn(pred_logits (B, Q, K), targets, indices) -> class_error in percent (float or 0-d tensor).

    `indices[b] = (query_idx, target_idx)` is the Hungarian matching of image b (as the matcher
    returns it). Compared with SetCriterion's `class_error`: 100 - top-1 accuracy (%) over the
    matched queries of the whole batch, 100 when there is nothing to classify.
    """
    name = "class_error matches detr_full.criterion.SetCriterion"
    criterion = _criterion()
    for outputs, targets in _error_cases():
        indices = criterion.matcher(outputs, targets)
        expected = float(criterion(outputs, targets)["class_error"])
        out, error = call(fn, outputs["pred_logits"].clone(), targets, indices)
        if error:
            return verdict(False, f"{error}. Hint: gather logits[b, query_idx] and labels[target_idx] "
                            "for every image, then compare argmax(-1) with the labels.")
        value = _number(out)
        if value is None:
            return verdict(False, f"expected a number (float or 0-d tensor), got {type(out).__name__}.")
        if math.isclose(value, expected, abs_tol=1e-3):
            continue
        if math.isclose(value, 100 - expected, abs_tol=1e-3):
            return verdict(False, "you returned the accuracy; class_error is 100 - accuracy.")
        if math.isclose(value * 100, expected, abs_tol=1e-3):
            return verdict(False, "class_error is in percent (0..100), not a fraction.")
        return verdict(False, f"got {value:.3f}, expected {expected:.3f}. Only the matched queries count "
                        "(the no-object ones are not classified), pooled over the whole batch; the "
                        "argmax runs over all K logits, no-object included.")
    return verdict(True, name)


def check_cardinality_error(fn: Callable[[Tensor, list[dict]], Any]) -> bool:
    """fn(pred_logits (B, Q, K), targets) -> cardinality_error (float or 0-d tensor).

    Compared with SetCriterion's `cardinality_error`: per image |#queries whose argmax is not
    "no object" - #targets|, averaged over the images of the batch.
    """
    name = "cardinality_error matches detr_full.criterion.SetCriterion"
    criterion = _criterion()
    for outputs, targets in _error_cases():
        expected = float(criterion(outputs, targets)["cardinality_error"])
        out, error = call(fn, outputs["pred_logits"].clone(), targets)
        if error:
            return verdict(False, f"{error}. Hint: count per image the queries whose argmax is not the "
                            "last index, subtract len(labels), take the absolute value, average.")
        value = _number(out)
        if value is None:
            return verdict(False, f"expected a number (float or 0-d tensor), got {type(out).__name__}.")
        if math.isclose(value, expected, abs_tol=1e-4):
            continue
        logits = outputs["pred_logits"]
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        counts = torch.tensor([float(len(t["labels"])) for t in targets])
        if math.isclose(value, float((predicted - counts).abs().sum()), abs_tol=1e-4):
            return verdict(False, "average over the images of the batch, don't sum.")
        if math.isclose(value, abs(float(predicted.sum() - counts.sum())) / len(targets), abs_tol=1e-4):
            return verdict(False, "take the absolute difference per image before averaging.")
        return verdict(False, f"got {value:.3f}, expected {expected:.3f}. A query predicts an object "
                        "when its argmax is not the last logit (no object); no matching is involved.")
    return verdict(True, name)


# ----------------------------------------------------------------------------- 09: the lr schedule

def _step_lr_reference(epoch: int, lr: float, lr_drop: int) -> float:
    """The lr of epoch `epoch` under torch's StepLR(step_size=lr_drop, gamma=0.1), stepped per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, lr_drop)
    for _ in range(epoch):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def check_step_lr(fn: Callable[[int, float, int], Any]) -> bool:
    """fn(epoch, lr, lr_drop) -> the learning rate used during `epoch` (0-based).

    detr_full.train (like the official main.py) steps a StepLR(step_size=lr_drop, gamma=0.1) once
    after every epoch, so epochs 0 .. lr_drop - 1 use lr, the next lr_drop epochs lr / 10, ...
    """
    name = "the lr per epoch matches torch's StepLR as detr_full.train uses it"
    for epoch, lr, lr_drop in [(0, 1e-4, 200), (199, 1e-4, 200), (200, 1e-4, 200), (450, 1e-4, 200),
                               (3, 5e-4, 3), (7, 2e-4, 3)]:
        expected = _step_lr_reference(epoch, lr, lr_drop)
        out, error = call(fn, epoch, lr, lr_drop)
        if error:
            return verdict(False, f"{error}. Hint: count how many drops happened before this epoch.")
        value = _number(out)
        if value is None:
            return verdict(False, f"expected a number, got {type(out).__name__}.")
        if not math.isclose(value, expected, rel_tol=1e-6):
            hint = f"epoch {epoch} with lr={lr}, lr_drop={lr_drop}: got {value:.3g}, expected {expected:.3g}."
            if epoch == lr_drop:
                hint += " The drop happens after epoch lr_drop - 1, so epoch lr_drop already uses lr / 10."
            elif epoch == lr_drop - 1:
                hint += " Epoch lr_drop - 1 (0-based) still trains with the full lr."
            return verdict(False, hint)
    return verdict(True, name)


# ----------------------------------------------------------------------------- 11: head surgery

class _Heads(torch.nn.Module):
    """A stand-in for DETR with its parameter names: a shared trunk plus heads sized by the dataset."""

    def __init__(self, num_classes: int, num_queries: int, hidden_dim: int = 8):
        super().__init__()
        self.input_proj = torch.nn.Conv2d(16, hidden_dim, kernel_size=1)
        self.transformer = torch.nn.Linear(hidden_dim, hidden_dim)
        self.class_embed = torch.nn.Linear(hidden_dim, num_classes + 1)     # +1: "no object"
        self.bbox_embed = torch.nn.Linear(hidden_dim, 4)
        self.query_embed = torch.nn.Embedding(num_queries, hidden_dim)


def _tiny_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The pretrained model (19 classes, 10 queries) and yours (4 classes, 8 queries)."""
    with torch.random.fork_rng():  # leave the notebook's random stream untouched
        torch.manual_seed(0)
        return _Heads(num_classes=19, num_queries=10), _Heads(num_classes=4, num_queries=8)


def check_finetune_filter(fn: Callable[[dict, dict], Any]) -> bool:
    """fn(checkpoint_state_dict, model_state_dict) -> dict of the checkpoint entries to load.

    Compared with `load_model_weights(model, state_dict, finetune=True)`: keep an entry when the
    model has the same key with the same shape; everything else (a class head sized for other
    classes, other queries, keys the model lacks) is dropped and keeps its fresh initialisation.
    """
    name = "the kept entries match load_model_weights(..., finetune=True)"
    pretrained, mine = _tiny_models()
    checkpoint = pretrained.state_dict()
    checkpoint["some_extra_head.weight"] = torch.zeros(3)      # a key this model does not have
    dropped = set(load_model_weights(mine, dict(checkpoint), finetune=True))
    expected = {k for k in checkpoint if k not in dropped}
    out, error = call(fn, dict(checkpoint), mine.state_dict())
    if error:
        return verdict(False, f"{error}. Hint: {{k: v for k, v in checkpoint.items() if k in model_sd "
                        "and v.shape == model_sd[k].shape}}.")
    if not isinstance(out, dict):
        return verdict(False, f"expected a dict of the entries to load, got {type(out).__name__}.")
    kept = set(out)
    if kept == expected:
        return verdict(True, name)
    if "class_embed.weight" in kept or "query_embed.weight" in kept:
        return verdict(False, "class_embed / query_embed have other shapes in your model (other "
                        "num_classes / num_queries): compare shapes, not only keys.")
    if "some_extra_head.weight" in kept:
        return verdict(False, "keep only keys the model has: load_state_dict(strict=False) would "
                        "ignore an extra key, but it is not loaded either.")
    lost = sorted(expected - kept)
    return verdict(False, f"{len(lost)} entries that fit were dropped, e.g. {lost[:3]}.")
