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
