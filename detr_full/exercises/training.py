"""Checkers for the training notebooks: 07 (auxiliary losses), 08 (training DETR as published),
11 (full training) and 13 (fine-tuning on your data).

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

import copy
import math
import re
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from detr_full.build import loss_weights
from detr_full.checkpoint import load_model_weights
from detr_full.config import DETRConfig
from detr_full.criterion import SetCriterion
from detr_full.exercises.checking import call, failure, mistake, verdict
from detr_full.matcher import HungarianMatcher


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

    Compared with `detr_full.build.loss_weights(DETRConfig(...))`: `loss_ce` 1, `loss_bbox` and
    `loss_giou` their coefficients, and with aux_loss one `_i` copy of each for the readouts of
    decoder layers i = 0 .. dec_layers - 2 (the last layer's readout has no suffix).
    """
    name = "the weight_dict with its auxiliary `_i` copies matches detr_full.build.loss_weights"
    final_terms = ("loss_ce", "loss_bbox", "loss_giou")
    aux_key = re.compile(r"^loss_(ce|bbox|giou)_(\d+)$")
    for dec_layers, bbox, giou, aux in [(6, 5.0, 2.0, True), (3, 5.0, 2.0, True), (2, 1.5, 4.0, True),
                                        (1, 5.0, 2.0, True), (6, 5.0, 2.0, False)]:
        expected = loss_weights(DETRConfig(dec_layers=dec_layers, bbox_loss_coef=bbox, giou_loss_coef=giou,
                                           aux_loss=aux))
        out, error = call(fn, dec_layers, bbox, giou, aux)
        case = f"dec_layers={dec_layers}, aux_loss={aux}"
        if error:
            hint = ("start from the three final-layer terms, then add `f'{k}_{i}'` copies for i in "
                    "range(dec_layers - 1).")
            if "changed size during iteration" in error:
                hint = ("a dict can't grow while you loop over it: loop over a copy, "
                        "`for k, v in list(weights.items())`, or build the copies in a new dict first.")
            return failure(error, hint)
        if not isinstance(out, dict):
            return verdict(False, f"expected a dict, got {type(out).__name__} ({case}).")
        missing = sorted(set(expected) - set(out))
        extra = sorted(set(out) - set(expected), key=str)
        if missing or extra:
            hint = f"for {case} the keys differ: missing {missing[:4]}, unexpected {extra[:4]}."
            extra_layers = sorted({int(m.group(2)) for k in extra if isinstance(k, str) and (m := aux_key.match(k))})
            missing_layers = sorted({int(m.group(2)) for k in missing if (m := aux_key.match(k))})
            missing_terms = sorted({m.group(1) for k in missing if (m := aux_key.match(k))})
            if not aux and extra_layers:
                hint += " With aux_loss=False there are no `_i` copies: only the final-layer terms."
            elif any(k in extra for k in ("class_error", "cardinality_error")):
                hint += (" class_error and cardinality_error are logged, never weighted: they are not in the "
                         "weight_dict.")
            elif extra and not extra_layers:
                hint += " Name the copies f'{k}_{i}', e.g. loss_bbox_0 for decoder layer 0."
            elif 0 in missing_layers and dec_layers - 1 in extra_layers:
                hint += " Number the auxiliary layers from 0: suffixes _0 .. _{dec_layers - 2}."
            elif dec_layers - 1 in extra_layers:
                hint += " The last decoder layer is the main readout (no suffix): aux indices stop at dec_layers - 2."
            elif missing_layers == [dec_layers - 2]:
                hint += (" One copy per decoder layer except the last: i in range(dec_layers - 1), so the last "
                         "suffix is dec_layers - 2.")
            elif not extra and len(missing_terms) < 3 and missing_layers == list(range(dec_layers - 1)):
                hint += f" Every term has its auxiliary copies, loss_{missing_terms[0]} too."
            elif any(k in missing for k in final_terms):
                hint += " The final-layer terms loss_ce, loss_bbox and loss_giou keep their names, without suffix."
            return verdict(False, hint)
        wrong = [k for k in expected if _number(out[k]) is None or not math.isclose(_number(out[k]), expected[k])]
        if wrong:
            k = wrong[0]
            if k in final_terms:
                return verdict(False, f"for {case}, {k} has weight {out[k]!r}, expected {expected[k]}: loss_ce "
                                "weighs 1, loss_bbox bbox_loss_coef and loss_giou giou_loss_coef.")
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
    # By hand: by their boxes, queries 0, 1, 2 match targets 1, 0, 2, and all three are classified right.
    logits = torch.tensor([[[0.0, 0, 5, 0, 0], [0, 5, 0, 0, 0], [0, 0, 0, 5, 0], [0, 0, 0, 0, 5]]])  # (1, 4, 5)
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.3, 0.7, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([1, 2, 3]),
                "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.3, 0.7, 0.2, 0.2]])}]
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
    cases = _error_cases()
    # A last batch without any target, so nothing is matched: the contract says 100.
    cases.append((cases[0][0], [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 3))
    for outputs, targets in cases:
        indices = criterion.matcher(outputs, targets)
        expected = float(criterion(outputs, targets)["class_error"])
        logits = outputs["pred_logits"]
        out, error = call(fn, logits.clone(), targets, indices)
        nothing_matched = sum(len(q) for q, _ in indices) == 0
        if error:
            return failure(error, "when nothing is matched, return 100 (SetCriterion's convention)."
                           if nothing_matched else "gather logits[b, query_idx] and labels[target_idx] for "
                           "every image, then compare argmax(-1) with the labels.")
        value = _number(out)
        if value is None:
            return verdict(False, f"expected a number (float or 0-d tensor), got {type(out).__name__}.")
        if math.isclose(value, expected, abs_tol=1e-3):
            continue
        if nothing_matched:
            got = "NaN (the mean of an empty tensor)" if math.isnan(value) else f"{value:g}"
            return verdict(False, f"with no targets in the batch nothing is matched: you returned {got}, "
                            "expected 100. Return 100 when there is nothing to classify, as SetCriterion does "
                            "(every such batch counts as all wrong).")
        predicted = [logits[b, q].argmax(-1) for b, (q, _) in enumerate(indices)]
        labels = [t["labels"][j] for t, (_, j) in zip(targets, indices)]

        def error_rate(correct: Tensor) -> Tensor:
            return 100 - 100 * correct.float().mean()

        named = mistake(torch.tensor(value), torch.tensor(expected), [
            # before the accuracy: on the hand-made case where every argmax is "no object" the two coincide
            (lambda: error_rate(torch.cat([logits[b, q, :-1].argmax(-1) for b, (q, _) in enumerate(indices)])
                                == torch.cat(labels)),
             "the argmax runs over all K logits, no-object included: a matched query that predicts "
             "\"no object\" is a classification error."),
            (lambda: 100 - expected, "you returned the accuracy; class_error is 100 - accuracy."),
            (lambda: expected / 100, "class_error is in percent (0..100), not a fraction."),
            (lambda: torch.stack([error_rate(p == l) for p, l in zip(predicted, labels) if len(l)]).mean(),
             "pool the matched queries of the whole batch, then take one rate: averaging per-image rates "
             "weighs an image with one object like one with ten."),
            (lambda: error_rate(torch.cat(predicted) == torch.cat([t["labels"] for t in targets])),
             "compare each query with the label of the target it is matched to, labels[target_idx], in the "
             "matcher's order."),
            (lambda: error_rate(logits.argmax(-1) == _target_classes(logits, targets, indices)),
             "only the matched queries count: the unmatched ones (no object) are not classified here."),
        ])
        return verdict(False, named or f"got {value:.3f}, expected {expected:.3f}. Only the matched queries "
                       "count (the no-object ones are not classified), pooled over the whole batch; the argmax "
                       "runs over all K logits, no-object included.")
    return verdict(True, name)


def _target_classes(logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]]) -> Tensor:
    """(B, Q) int64: every query's class, "no object" (K - 1) where unmatched."""
    target_classes = torch.full(logits.shape[:2], logits.shape[-1] - 1, dtype=torch.int64)
    for b, (q, j) in enumerate(indices):
        target_classes[b, q] = targets[b]["labels"][j]
    return target_classes


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
            hint = ("count per image the queries whose argmax is not the last index, subtract len(labels), "
                    "take the absolute value, average.")
            if "dtype" in error:
                hint = "counts are integers: convert them with .float() before averaging."
            return failure(error, hint)
        value = _number(out)
        if value is None:
            return verdict(False, f"expected a number (float or 0-d tensor), got {type(out).__name__}.")
        if math.isclose(value, expected, abs_tol=1e-4):
            continue
        logits = outputs["pred_logits"]                                                # (B, Q, K)
        no_object = logits.shape[-1] - 1
        counts = torch.tensor([float(len(t["labels"])) for t in targets])             # (B,)

        def error_of(predicted: Tensor) -> Tensor:
            return (predicted.float() - counts).abs().mean()

        predicted = (logits.argmax(-1) != no_object).sum(1).float()                   # (B,)
        named = mistake(torch.tensor(value), torch.tensor(expected), [
            (lambda: (predicted - counts).abs().sum(), "average over the images of the batch, don't sum."),
            (lambda: abs(float(predicted.sum() - counts.sum())) / len(targets),
             "take the absolute difference per image before averaging."),
            (lambda: (predicted - counts).mean(), "take the absolute difference per image: |predicted - "
                                                  "targets|, so that too many and too few don't cancel out."),
            (lambda: error_of((logits.argmax(-1) == no_object).sum(1)),
             "count the queries that predict an object, whose argmax is NOT the last logit (no object)."),
            (lambda: error_of((logits.argmax(-1) != 0).sum(1)),
             "\"no object\" is the last logit (index K - 1 = num_classes), not index 0."),
            (lambda: error_of((logits.softmax(-1)[..., :-1].max(-1).values > 0.7).sum(1)),
             "a query predicts an object when its argmax is not \"no object\": no score threshold."),
            (lambda: error_of((logits.softmax(-1)[..., :-1].max(-1).values > 0.5).sum(1)),
             "a query predicts an object when its argmax is not \"no object\": no score threshold."),
        ], atol=1e-4)
        return verdict(False, named or f"got {value:.3f}, expected {expected:.3f}. A query predicts an object "
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
            return failure(error, "count how many drops happened before this epoch.")
        value = _number(out)
        if value is None:
            return verdict(False, f"expected a number, got {type(out).__name__}.")
        if not math.isclose(value, expected, rel_tol=1e-6):
            hint = f"epoch {epoch} with lr={lr}, lr_drop={lr_drop}: got {value:.3g}, expected {expected:.3g}."
            named = mistake(torch.tensor(value, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), [
                (lambda: lr * 0.1 ** (epoch / lr_drop),
                 "The lr drops in steps, not smoothly: count whole drops with integer division, epoch // lr_drop."),
                (lambda: lr * 0.1 if epoch >= lr_drop else lr,
                 "StepLR drops every lr_drop epochs, not once: after 2 * lr_drop epochs the lr is lr / 100."),
                (lambda: lr * 0.5 ** (epoch // lr_drop), "Each drop divides the lr by 10 (gamma = 0.1), not by 2."),
            ], rtol=1e-6, atol=0)
            if named:
                hint += " " + named
            elif epoch == lr_drop:
                hint += " The drop happens after epoch lr_drop - 1, so epoch lr_drop already uses lr / 10."
            elif epoch == lr_drop - 1:
                hint += " Epoch lr_drop - 1 (0-based) still trains with the full lr."
            return verdict(False, hint)
    return verdict(True, name)


# ----------------------------------------------------------------------------- 11: head surgery

class _Heads(torch.nn.Module):
    """A stand-in for DETR with its parameter names: a shared trunk plus heads sized by the dataset."""

    def __init__(self, num_classes: int, num_queries: int, hidden_dim: int = 8, backbone_channels: int = 16):
        super().__init__()
        self.input_proj = torch.nn.Conv2d(backbone_channels, hidden_dim, kernel_size=1)
        self.transformer = torch.nn.Linear(hidden_dim, hidden_dim)
        self.class_embed = torch.nn.Linear(hidden_dim, num_classes + 1)     # +1: "no object"
        self.bbox_embed = torch.nn.Linear(hidden_dim, 4)
        self.query_embed = torch.nn.Embedding(num_queries, hidden_dim)


def _finetune_cases() -> list[tuple[str, dict[str, Tensor], torch.nn.Module]]:
    """(case, pretrained checkpoint, your fresh model): all weights random, the model's unlike the
    checkpoint's, so the checker sees whose tensors come back."""
    with torch.random.fork_rng():  # leave the notebook's random stream untouched
        torch.manual_seed(0)
        pretrained = _Heads(num_classes=19, num_queries=10)
        other_classes, same_classes = _Heads(num_classes=4, num_queries=8), _Heads(num_classes=19, num_queries=8)
        # Heads (K, D) and (Q, D) change in their second dimension only, so len() can't tell, and
        # input_proj.weight goes from (8, 16, 1, 1) to (16, 8, 1, 1), the same number of elements.
        other_width = _Heads(num_classes=19, num_queries=10, hidden_dim=16, backbone_channels=8)
    checkpoint = pretrained.state_dict()
    checkpoint["some_extra_head.weight"] = torch.zeros(3)      # a key these models do not have
    return [("4 classes and 8 queries instead of 19 and 10", checkpoint, other_classes),
            ("the same 19 classes, 8 queries instead of 10", checkpoint, same_classes),
            ("hidden_dim 16 instead of 8 and a backbone with 8 channels instead of 16", checkpoint, other_width)]


def check_finetune_filter(fn: Callable[[dict, dict], Any]) -> bool:
    """fn(checkpoint_state_dict, model_state_dict) -> dict of the checkpoint entries to load.

    Compared with `load_model_weights(model, state_dict, finetune=True)`: keep an entry, with the
    checkpoint's tensor, when the model has the same key with the same shape; everything else (a class
    head sized for other classes, other queries, keys the model lacks) is dropped and keeps its fresh
    initialisation. Prints OK or a hint.
    """
    name = "the kept entries match load_model_weights(..., finetune=True)"
    for case, checkpoint, model in _finetune_cases():
        model_sd = model.state_dict()
        dropped = set(load_model_weights(copy.deepcopy(model), dict(checkpoint), finetune=True))
        expected = {k for k in checkpoint if k not in dropped}
        misfits = {k for k in checkpoint if k in model_sd and checkpoint[k].shape != model_sd[k].shape}
        out, error = call(fn, dict(checkpoint), {k: v.clone() for k, v in model_sd.items()})
        if error:
            return failure(error, "{k: v for k, v in checkpoint.items() if k in model_sd and "
                           "v.shape == model_sd[k].shape}.")
        if isinstance(out, (list, tuple, set)) and all(isinstance(k, str) for k in out):
            return verdict(False, "return a dict {key: tensor} of the entries to load, not only their keys.")
        if not isinstance(out, dict):
            return verdict(False, f"expected a dict of the entries to load, got {type(out).__name__}.")
        kept = set(out)

        def same(a: Any, b: Tensor) -> bool:
            return isinstance(a, Tensor) and a.shape == b.shape and torch.equal(a, b)

        from_model = sorted(k for k in kept & set(model_sd) if same(out[k], model_sd[k])
                            and not (k in checkpoint and same(out[k], checkpoint[k])))
        if kept == expected | misfits and from_model and set(from_model) >= misfits:
            return verdict(False, "return only the checkpoint entries that fit: class_embed and query_embed "
                            "keep their fresh initialisation by not being in the dict, not by sending the "
                            "model's own tensors back.")
        if from_model:
            return verdict(False, f"{from_model[0]} holds the model's own (freshly initialised) tensor; return "
                            "the checkpoint's, checkpoint_state_dict[k], or the pretrained weights never load.")
        if kept == misfits:
            return verdict(False, "the condition is the wrong way round: keep the entries whose shape matches "
                            "the model's, drop the ones that differ.")
        if kept & misfits:
            k = sorted(kept & misfits)[0]
            if checkpoint[k].shape[0] == model_sd[k].shape[0]:
                return verdict(False, f"{k} is {tuple(checkpoint[k].shape)} in the checkpoint and "
                               f"{tuple(model_sd[k].shape)} in your model ({case}): compare whole shapes, "
                               "v.shape == model_sd[k].shape, not len() or the first dimension.")
            return verdict(False, f"{k} has another shape in your model ({case}): compare shapes, not only keys "
                           "or sizes: v.shape == model_sd[k].shape.")
        if "some_extra_head.weight" in kept:
            return verdict(False, "keep only keys the model has: load_state_dict(strict=False) would "
                            "ignore an extra key, but it is not loaded either.")
        unknown = sorted(kept - set(checkpoint), key=str)
        if unknown:
            return verdict(False, f"{unknown[0]} is not in the checkpoint: return checkpoint entries only.")
        lost = sorted(expected - kept)
        if lost:
            same_shape_heads = [k for k in lost if k.startswith(("class_embed", "query_embed"))]
            if same_shape_heads:
                return verdict(False, f"{same_shape_heads[0]} has the same shape in this model ({case}): keep "
                                "it. Decide by shape, not by name.")
            return verdict(False, f"{len(lost)} entries that fit were dropped ({case}), e.g. {lost[:3]}.")
        changed = sorted(k for k in kept if not same(out[k], checkpoint[k]))
        if changed:
            return verdict(False, f"{changed[0]} is not the checkpoint's tensor: return the entries as they are "
                            "in checkpoint_state_dict.")
    return verdict(True, name)
