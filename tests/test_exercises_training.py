"""The training-notebook checkers accept correct solutions, reject wrong ones with a hint, never raise."""

import torch

from detr_full.exercises.training import (check_cardinality_error, check_class_error, check_finetune_filter,
                                          check_loss_weights, check_step_lr)


# ----------------------------------------------------------------------------- reference solutions

def _loss_weights(dec_layers, bbox_loss_coef, giou_loss_coef, aux_loss):
    final = {"loss_ce": 1.0, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    weights = dict(final)
    if aux_loss:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in final.items()})
    return weights


def _class_error(pred_logits, targets, indices):
    predicted = torch.cat([pred_logits[b, q].argmax(-1) for b, (q, _) in enumerate(indices)])
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    if len(labels) == 0:
        return 100.0
    return 100 - 100 * (predicted == labels).float().mean()


def _cardinality_error(pred_logits, targets):
    predicted = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1).float()
    counts = torch.tensor([float(len(t["labels"])) for t in targets])
    return (predicted - counts).abs().mean()


def _step_lr(epoch, lr, lr_drop):
    return lr * 0.1 ** (epoch // lr_drop)


def _finetune_filter(checkpoint, model_sd):
    return {k: v for k, v in checkpoint.items() if k in model_sd and v.shape == model_sd[k].shape}


def _stub(*args):
    raise NotImplementedError


# ----------------------------------------------------------------------------- tests

def test_check_loss_weights(capsys):
    assert check_loss_weights(_loss_weights)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_loss_weights(lambda d, b, g, a: None)
    assert "not yet" in capsys.readouterr().out
    # one aux copy too many: layers 0 .. dec_layers - 1 instead of .. dec_layers - 2
    too_many = lambda d, b, g, a: _loss_weights(d + 1, b, g, a)  # noqa: E731
    assert not check_loss_weights(too_many)
    assert "dec_layers - 2" in capsys.readouterr().out
    # aux copies weighted 1
    def unit(d, b, g, a):
        return {k: (v if "_" not in k[5:] else 1.0) for k, v in _loss_weights(d, b, g, a).items()}
    assert not check_loss_weights(unit)
    assert "keeps the weight" in capsys.readouterr().out


def test_check_class_error(capsys):
    assert check_class_error(_class_error)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_class_error(lambda *a: 100 - _class_error(*a))
    assert "accuracy" in capsys.readouterr().out
    assert not check_class_error(lambda *a: _class_error(*a) / 100)
    assert "percent" in capsys.readouterr().out
    # ignoring the no-object logit in the argmax is wrong
    no_eos = lambda p, t, i: _class_error(p[..., :-1], t, i)  # noqa: E731
    assert not check_class_error(no_eos)
    assert "not yet" in capsys.readouterr().out


def test_check_cardinality_error(capsys):
    assert check_cardinality_error(_cardinality_error)
    assert capsys.readouterr().out.startswith("OK:")
    summed = lambda p, t: _cardinality_error(p, t) * len(t)  # noqa: E731
    assert not check_cardinality_error(summed)
    assert "average" in capsys.readouterr().out
    assert not check_cardinality_error(lambda p, t: "three")
    assert "expected a number" in capsys.readouterr().out


def test_check_step_lr(capsys):
    assert check_step_lr(_step_lr)
    assert capsys.readouterr().out.startswith("OK:")
    off_by_one = lambda e, lr, d: lr * 0.1 ** ((e - 1) // d) if e else lr  # noqa: E731
    assert not check_step_lr(off_by_one)
    assert "already uses lr / 10" in capsys.readouterr().out


def test_check_finetune_filter(capsys):
    assert check_finetune_filter(_finetune_filter)
    assert capsys.readouterr().out.startswith("OK:")
    keys_only = lambda c, m: {k: v for k, v in c.items() if k in m}  # noqa: E731
    assert not check_finetune_filter(keys_only)
    assert "compare shapes" in capsys.readouterr().out
    assert not check_finetune_filter(lambda c, m: dict(c))
    assert "not yet" in capsys.readouterr().out


def test_checkers_never_raise_on_stubs(capsys):
    for check in (check_loss_weights, check_class_error, check_cardinality_error, check_step_lr,
                  check_finetune_filter):
        assert check(_stub) is False
        assert "stub" in capsys.readouterr().out


# ----------------------------------------------------------------------------- likely wrong answers

def test_check_loss_weights_names_each_mistake(capsys):
    assert check_loss_weights(_loss_weights)
    assert capsys.readouterr().out.startswith("OK:")

    def copies(d, b, g, a, layers):
        final = {"loss_ce": 1.0, "loss_bbox": b, "loss_giou": g}
        return {**final, **{f"{k}_{i}": v for i in layers for k, v in final.items()}} if a else final

    def grows_while_looping(d, b, g, a):
        weights = {"loss_ce": 1.0, "loss_bbox": b, "loss_giou": g}
        if a:
            for i in range(d - 1):
                for k, v in weights.items():
                    weights[f"{k}_{i}"] = v
        return weights

    for wrong, words in (
            (lambda d, b, g, a: copies(d, b, g, True, range(d - 1)), "aux_loss=False there are no `_i` copies"),
            (lambda d, b, g, a: copies(d, b, g, a, range(1, d)), "from 0"),
            (lambda d, b, g, a: copies(d, b, g, a, range(d - 2)), "except the last"),
            (lambda d, b, g, a: {k.replace("_", ".", 1) if k.count("_") == 2 else k: v
                                 for k, v in _loss_weights(d, b, g, a).items()}, "f'{k}_{i}'"),
            (lambda d, b, g, a: {**_loss_weights(d, b, g, a), "class_error": 0.0}, "logged, never weighted"),
            (lambda d, b, g, a: {**_loss_weights(d, b, g, a), "loss_bbox": g, "loss_giou": b},
             "loss_bbox bbox_loss_coef"),
            (lambda d, b, g, a: {k: v for k, v in _loss_weights(d, b, g, a).items() if not k.startswith("loss_ce_")},
             "loss_ce too"),
            (lambda d, b, g, a: {k: v / d if k.count("_") == 2 else v for k, v in _loss_weights(d, b, g, a).items()},
             "keeps the weight of its final-layer term"),
            (grows_while_looping, "list(weights.items())")):
        assert not check_loss_weights(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_class_error_names_each_mistake(capsys):
    assert check_class_error(_class_error)
    assert capsys.readouterr().out.startswith("OK:")

    def nan_when_empty(pred_logits, targets, indices):       # the case: the mean of nothing is NaN
        predicted = torch.cat([pred_logits[b, q].argmax(-1) for b, (q, _) in enumerate(indices)])
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        return 100 - 100 * (predicted == labels).float().mean()

    def per_image_mean(pred_logits, targets, indices):
        rates = [100 - 100 * (pred_logits[b, q].argmax(-1) == targets[b]["labels"][j]).float().mean()
                 for b, (q, j) in enumerate(indices) if len(q)]
        return torch.stack(rates).mean() if rates else 100.0

    def unpermuted_labels(pred_logits, targets, indices):
        predicted = torch.cat([pred_logits[b, q].argmax(-1) for b, (q, _) in enumerate(indices)])
        labels = torch.cat([t["labels"] for t in targets])
        return 100 - 100 * (predicted == labels).float().mean() if len(labels) else 100.0

    def all_queries(pred_logits, targets, indices):
        classes = torch.full(pred_logits.shape[:2], pred_logits.shape[-1] - 1)
        for b, (q, j) in enumerate(indices):
            classes[b, q] = targets[b]["labels"][j]
        return 100 - 100 * (pred_logits.argmax(-1) == classes).float().mean()

    for wrong, words in ((nan_when_empty, "NaN (the mean of an empty tensor)"),
                         (lambda p, t, i: _class_error(p, t, i) if sum(len(x["labels"]) for x in t) else 0.0,
                          "expected 100"),
                         (per_image_mean, "pool the matched queries"), (unpermuted_labels, "labels[target_idx]"),
                         (all_queries, "only the matched queries count"),
                         (lambda p, t, i: _class_error(p, t, i) * sum(len(q) for q, _ in i) / 100 if
                          sum(len(q) for q, _ in i) else 100.0, "expected"),          # a count of errors, not a rate
                         (lambda p, t, i: _class_error(p[..., :-1], t, i), "no-object included")):
        assert not check_class_error(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_cardinality_error_names_each_mistake(capsys):
    assert check_cardinality_error(lambda p, t: torch.nn.functional.l1_loss(   # the same mean absolute difference
        (p.argmax(-1) != p.shape[-1] - 1).sum(1).float(), torch.tensor([float(len(x["labels"])) for x in t])))
    assert capsys.readouterr().out.startswith("OK:")

    def counted(predicted_per_image, targets):
        counts = torch.tensor([float(len(t["labels"])) for t in targets])
        return (predicted_per_image.float() - counts).abs().mean()

    def total_difference(p, t):
        predicted = (p.argmax(-1) != p.shape[-1] - 1).sum()
        return (predicted - sum(len(x["labels"]) for x in t)).abs() / len(t)

    def signed(p, t):
        counts = torch.tensor([float(len(x["labels"])) for x in t])
        return ((p.argmax(-1) != p.shape[-1] - 1).sum(1).float() - counts).mean()

    def long_counts(p, t):
        counts = torch.tensor([len(x["labels"]) for x in t])
        return ((p.argmax(-1) != p.shape[-1] - 1).sum(1) - counts).abs().mean()

    for wrong, words in ((total_difference, "absolute difference per image before averaging"),
                         (signed, "absolute difference per image"),
                         (lambda p, t: counted((p.argmax(-1) == p.shape[-1] - 1).sum(1), t), "is NOT the last"),
                         (lambda p, t: counted((p.argmax(-1) != 0).sum(1), t), "not index 0"),
                         (lambda p, t: counted((p.softmax(-1)[..., :-1].max(-1).values > 0.7).sum(1), t),
                          "no score threshold"),
                         (long_counts, ".float()"),
                         (lambda p, t: counted((p.softmax(-1)[..., -1] < 0.5).sum(1), t), "no score threshold"),
                         (lambda p, t: _cardinality_error(p, t) ** 2, "expected"),    # not the absolute error
                         (lambda p, t: counted((p[..., :-1].argmax(-1) != p.shape[-1] - 1).sum(1), t), "expected")):
        assert not check_cardinality_error(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_step_lr_names_each_mistake(capsys):
    assert check_step_lr(lambda e, lr, d: lr / 10 ** (e // d))
    assert capsys.readouterr().out.startswith("OK:")
    for wrong, words in ((lambda e, lr, d: lr * 0.1 * (e // d), "got 0"),          # times the count, not a power
                         (lambda e, lr, d: lr * 0.1 if e > d else lr, "already uses lr / 10"),
                         (lambda e, lr, d: lr * 0.1 ** -(-e // d), "still trains with the full lr"),   # ceil
                         (lambda e, lr, d: lr * 0.1 ** round(e / d), "still trains with the full lr"),
                         (lambda e, lr, d: lr * 0.1 ** (e / d), "integer division"),
                         (lambda e, lr, d: lr * 0.1 if e >= d else lr, "not once"),
                         (lambda e, lr, d: lr * 0.5 ** (e // d), "gamma = 0.1"),
                         (lambda e, lr, d: lr * 0.1 ** ((e + 1) // d), "still trains with the full lr")):
        assert not check_step_lr(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_finetune_filter_names_each_mistake(capsys):
    def model_tensors(c, m):      # the case: keys right, but the model's own fresh tensors: loads nothing
        return {k: m[k] for k, v in c.items() if k in m and v.shape == m[k].shape}

    def merged(c, m):             # a full state dict: the model's tensors where the checkpoint does not fit
        return {**m, **_finetune_filter(c, m)}

    def by_name(c, m):            # drops the heads by name, whatever their shape
        return {k: v for k, v in c.items() if k in m and not k.startswith(("class_embed", "query_embed"))}

    for wrong, words in ((model_tensors, "the model's own (freshly initialised) tensor"),
                         (merged, "not by sending the model's own tensors back"),
                         (lambda c, m: {k: v for k, v in c.items() if k in m and v.shape != m[k].shape},
                          "wrong way round"),
                         (lambda c, m: {k: v for k, v in c.items() if v.shape == m.get(k, v).shape},
                          "keep only keys the model has"),
                         (by_name, "Decide by shape, not by name"),
                         (lambda c, m: {}, "entries that fit were dropped"),
                         (lambda c, m: {k: v * 0.5 for k, v in _finetune_filter(c, m).items()},
                          "not the checkpoint's tensor"),
                         (lambda c, m: list(_finetune_filter(c, m)), "not only their keys"),
                         (lambda c, m: {**_finetune_filter(c, m), "extra": torch.zeros(1)}, "not in the checkpoint"),
                         (lambda c, m: {k: v for k, v in c.items() if k in m and len(v) == len(m[k])},
                          "not len() or the first dimension"),
                         (lambda c, m: {k: v for k, v in c.items() if k in m and v.numel() == m[k].numel()},
                          "not only keys or sizes")):
        assert not check_finetune_filter(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out

    def pops_in_place(c, m):      # deleting from the checkpoint dict it was given is fine
        for k in [k for k, v in c.items() if k not in m or v.shape != m[k].shape]:
            del c[k]
        return c

    assert check_finetune_filter(pops_in_place)
    assert capsys.readouterr().out.startswith("OK:")
