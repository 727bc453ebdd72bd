"""The notebook-02 checkers accept a correct solution, reject wrong ones with a hint, never raise."""

import torch
import torch.nn.functional as F

from detr_full.backbone import Backbone
from detr_full.exercises.backbone import (check_downsample_mask, check_feature_size, check_frozen_batch_norm,
                                          reference_feature_size)


def _frozen_bn(x, weight, bias, running_mean, running_var, eps):
    scale = weight / torch.sqrt(running_var + eps)
    return (x - running_mean[None, :, None, None]) * scale[None, :, None, None] + bias[None, :, None, None]


def test_check_frozen_batch_norm(capsys):
    assert check_frozen_batch_norm(_frozen_bn)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_frozen_batch_norm(lambda x, w, b, m, v, eps: _frozen_bn(x, w, b, m, v, 0.0))
    assert "eps" in capsys.readouterr().out
    batch_stats = lambda x, w, b, m, v, eps: _frozen_bn(  # noqa: E731
        x, w, b, x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False), eps)
    assert not check_frozen_batch_norm(batch_stats)
    assert "running_mean" in capsys.readouterr().out
    assert not check_frozen_batch_norm(lambda *args: None)
    assert "None" in capsys.readouterr().out


def _downsample_integer(padding_mask, size):
    """Nearest neighbour by integer arithmetic: must agree with F.interpolate on the checker's cases."""
    (big_h, big_w), (h, w) = padding_mask.shape[1:], size
    rows, cols = torch.arange(h) * big_h // h, torch.arange(w) * big_w // w
    return padding_mask[:, rows][:, :, cols]


def test_check_downsample_mask(capsys):
    assert check_downsample_mask(lambda m, s: F.interpolate(m[None].float(), size=s)[0].bool())
    assert check_downsample_mask(_downsample_integer)
    capsys.readouterr()
    assert not check_downsample_mask(lambda m, s: ~F.interpolate(m[None].float(), size=s)[0].bool())
    assert "polarity" in capsys.readouterr().out
    assert not check_downsample_mask(lambda m, s: F.interpolate(m[None].float(), size=s)[0])
    assert "bool" in capsys.readouterr().out
    assert not check_downsample_mask(lambda m, s: F.interpolate(m.float(), size=s).bool())   # no channel dim
    assert "not yet" in capsys.readouterr().out


def test_reference_feature_size_is_the_real_backbone():
    # On the meta device the real ResNet-50 runs its shape arithmetic only: no weights, no compute.
    with torch.device("meta"):
        plain = Backbone("resnet50", train_backbone=False)
        dc5 = Backbone("resnet50", train_backbone=False, dilation=True)
        for h, w in ((33, 64), (100, 129), (17, 1)):
            images, mask = torch.zeros(1, 3, h, w), torch.zeros(1, h, w, dtype=torch.bool)
            for backbone, dilation in ((plain, False), (dc5, True)):
                features, small_mask = backbone(images, mask)
                expected = reference_feature_size(h, w, dilation)
                assert tuple(features.shape[-2:]) == expected == tuple(small_mask.shape[-2:])


def test_check_feature_size(capsys):
    assert check_feature_size(reference_feature_size)
    assert capsys.readouterr().out.startswith("OK:")
    assert not check_feature_size(lambda h, w, d: (h // (16 if d else 32), w // (16 if d else 32)))
    assert "ceil" in capsys.readouterr().out
    assert not check_feature_size(lambda h, w, d: reference_feature_size(h, w, False))
    assert "DC5" in capsys.readouterr().out
    assert not check_feature_size(lambda h, w, d: None)
    assert not check_feature_size(lambda h, w, d: "oops")
    assert "not yet" in capsys.readouterr().out


# ----------------------------------------------------------------------------- likely wrong answers

def _bn(x, weight, bias, mean, std):
    def c(v):
        return v[None, :, None, None]
    return (x - c(mean)) / c(std) * c(weight) + c(bias)


def _in_place_bn(x, weight, bias, running_mean, running_var, eps):
    x -= running_mean[None, :, None, None]            # right values, but the caller's x is overwritten
    return x * (weight / (running_var + eps).sqrt())[None, :, None, None] + bias[None, :, None, None]


def test_check_frozen_batch_norm_names_each_mistake(capsys):
    ones, zeros = torch.ones(6), torch.zeros(6)
    for wrong, words in (
            (lambda x, w, b, m, v, eps: _bn(x, w, b, m, v.sqrt() + eps), "inside the square root"),
            (lambda x, w, b, m, v, eps: _bn(x, w, b, m, (v + 1e-5).sqrt()), "not a hard-coded 1e-5"),
            (lambda x, w, b, m, v, eps: _bn(x, w, b, m, v + eps), "not by the variance"),
            (lambda x, w, b, m, v, eps: _bn(x, b, w, m, (v + eps).sqrt()), "weight and bias are swapped"),
            (lambda x, w, b, m, v, eps: _bn(x, w, b, zeros, (v + eps).sqrt()), "subtract running_mean"),
            (lambda x, w, b, m, v, eps: _bn(x, ones, b, m, (v + eps).sqrt()), "multiply the normalised x by weight"),
            (lambda x, w, b, m, v, eps: _bn(x, w, zeros, m, (v + eps).sqrt()), "add bias"),
            (lambda x, w, b, m, v, eps: _bn(x, w, b, x.mean((0, 2, 3)), (x.var((0, 2, 3)) + eps).sqrt()),
             "batch's own statistics"),                                      # unbiased batch variance
            (lambda x, w, b, m, v, eps: (x - m) / (v + eps).sqrt() * w + b, "(1, C, 1, 1)"),  # (C,) on the W axis
            (_in_place_bn, "changed its input `x` in place")):
        assert not check_frozen_batch_norm(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out
    assert check_frozen_batch_norm(lambda *a: _frozen_bn(*a).double())     # float64 is compared, not a crash
    assert capsys.readouterr().out.startswith("OK:")


def _sampled(padding_mask, size, rounding):
    """Cell i takes pixel rounding(i * H / h), clamped into the mask: nearest with another rounding."""
    (big_h, big_w), (h, w) = padding_mask.shape[1:], size
    rows = rounding(torch.arange(h) * big_h / h).long().clamp(max=big_h - 1)
    cols = rounding(torch.arange(w) * big_w / w).long().clamp(max=big_w - 1)
    return padding_mask[:, rows][:, :, cols]


def _strided(padding_mask, size, step=lambda big, n: big // n):
    """Every step-th pixel (H // h by default): nearest only when H / h is whole."""
    (big_h, big_w), (h, w) = padding_mask.shape[1:], size
    rows = (torch.arange(h) * step(big_h, h)).clamp(max=big_h - 1)
    cols = (torch.arange(w) * step(big_w, w)).clamp(max=big_w - 1)
    return padding_mask[:, rows][:, :, cols]


def _last_pixel(padding_mask, size):
    """Each cell's last pixel, floor((i + 1) * H / h) - 1."""
    return _sampled(padding_mask, size, lambda x: (x + x[1] if len(x) > 1 else x).floor() - 1)


def _from_valid_counts(padding_mask, size):
    """ceil(valid * h / H) valid cells per image: equals nearest sampling on a top-left valid region."""
    (big_h, big_w), (h, w) = padding_mask.shape[1:], size
    out = torch.ones(len(padding_mask), h, w, dtype=torch.bool)
    for b, valid in enumerate(~padding_mask):
        rows, cols = int(valid.any(1).sum()), int(valid.any(0).sum())
        out[b, :-(-rows * h // big_h), :-(-cols * w // big_w)] = False
    return out


def test_check_downsample_mask_names_each_mistake(capsys):
    def interpolate(m, s, **kw):
        return F.interpolate(m[None].float(), size=s, **kw)[0].bool()

    # Right answers written otherwise: the valid region is at the top left, so a cell's first pixel
    # (the one nearest samples) is valid exactly when any of its pixels is.
    for right in (lambda m, s: _sampled(m, s, torch.floor), _from_valid_counts,
                  lambda m, s: -F.adaptive_max_pool2d(-m[:, None].float(), s)[:, 0] > 0):     # min pooling
        assert check_downsample_mask(right)
        assert capsys.readouterr().out.startswith("OK:")
    for wrong, words in (
            (lambda m, s: _sampled(m, s, torch.ceil), "(ceil)"),                           # issue 18
            (lambda m, s: _sampled(m, s, torch.round), "to the nearest integer"),
            (_strided, "whole stride H // h"),
            (lambda m, s: _strided(m, s, lambda big, n: -(-big // n)), "(ceil)"),   # step ceil(H / h): ceil here
            (lambda m, s: F.adaptive_avg_pool2d(m[:, None].float(), s)[:, 0] > 0.5, "most of its pixels"),
            (lambda m, s: F.interpolate(m[None].float(), size=s, mode="bilinear")[0] > 0.5, "most of its pixels"),
            (lambda m, s: F.adaptive_max_pool2d(m[:, None].float(), s)[:, 0].bool(), "any of its pixels"),
            (_last_pixel, "last pixel"),
            (lambda m, s: interpolate(m, s, mode="nearest-exact"), "centre"),
            (lambda m, s: interpolate(m, s[::-1]), "size is (h, w)"),
            (lambda m, s: F.interpolate(m[:, None].float(), size=s).bool(), "drop the dimension"),
            (lambda m, s: m[:, ::32, ::32], "not always 32"),
            (lambda m, s: F.interpolate(m.float(), size=s).bool(), "add a dimension")):   # (B, H, W) is 1-D to it
        assert not check_downsample_mask(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out


def test_check_feature_size_names_each_mistake(capsys):
    def ceil(n, stride):
        return -(-n // stride)

    assert check_feature_size(lambda h, w, d: ((h + (15 if d else 31)) // (16 if d else 32),
                                               (w + (15 if d else 31)) // (16 if d else 32)))  # ceil by integers
    assert capsys.readouterr().out.startswith("OK:")

    for wrong, words in (
            (lambda h, w, d: (round(h / (16 if d else 32)), round(w / (16 if d else 32))), "nearest integer"),
            (lambda h, w, d: (h // (16 if d else 32) + 1, w // (16 if d else 32) + 1), "one cell too many"),
            (lambda h, w, d: (ceil(h, 32 if d else 16), ceil(w, 32 if d else 16)), "other way round"),
            (lambda h, w, d: (ceil(h, 8 if d else 32), ceil(w, 8 if d else 32)), "not 8"),
            (lambda h, w, d: reference_feature_size(h, w, d)[::-1], "swapped"),
            (lambda h, w, d: (h / (16 if d else 32), w / (16 if d else 32)), "whole number"),
            (lambda h, w, d: (1, 2, 3), "pair")):
        assert not check_feature_size(wrong)
        out = capsys.readouterr().out
        assert out.startswith("not yet:") and words in out, out
