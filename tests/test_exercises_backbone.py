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
    assert not check_downsample_mask(lambda m, s: -F.adaptive_max_pool2d(-m[None].float(), s)[0].bool())
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
