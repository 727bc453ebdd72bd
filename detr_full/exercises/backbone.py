"""Checkers for notebook 02 (the backbone and padding masks).

Each `check_*` calls the learner's function on a few small cases, compares the answers with
`detr_full`, prints "OK: ..." or "not yet: <hint>", and returns True or False. A wrong answer, an
exception or an unfilled stub (returning None) never raises.

    check_frozen_batch_norm(fn)  fn(x (B, C, H, W), weight, bias, running_mean, running_var (C,), eps) -> (B, C, H, W)
    check_downsample_mask(fn)    fn(padding_mask (B, H, W) bool, size (h, w)) -> (B, h, w) bool
    check_feature_size(fn)       fn(height, width, dilation) -> (h, w) of ResNet-50's last feature map
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_full.backbone import FrozenBatchNorm2d
from detr_full.exercises.checking import call, failure, mistake, shape_problem, verdict


# ----------------------------------------------------------------------------- frozen BatchNorm

def check_frozen_batch_norm(fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, float], Tensor]) -> bool:
    """fn(x (B, C, H, W), weight (C,), bias (C,), running_mean (C,), running_var (C,), eps) ->
    (B, C, H, W): BatchNorm with the stored statistics. Compared with FrozenBatchNorm2d."""
    name = "matches detr_full.backbone.FrozenBatchNorm2d"
    g = torch.Generator().manual_seed(0)
    c = 6
    x = torch.randn(2, c, 5, 7, generator=g) * 3 + 1
    weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    mean = torch.randn(c, generator=g)
    var = torch.rand(c, generator=g) + 0.1
    var[0] = 1e-6                                   # a dead channel: here eps decides the output
    for eps in (1e-5, 1e-3):
        ref = FrozenBatchNorm2d(c, eps=eps)
        for buffer, value in zip(("weight", "bias", "running_mean", "running_var"), (weight, bias, mean, var)):
            getattr(ref, buffer).copy_(value)
        expected = ref(x)
        out, error = call(fn, x.clone(), weight.clone(), bias.clone(), mean.clone(), var.clone(), eps)
        if error:
            return failure(error, "y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with "
                           "(C,) vectors viewed as (1, C, 1, 1).")
        problem = shape_problem(out, tuple(x.shape))
        if problem:
            return verdict(False, f"{problem} Hint: y = (x - running_mean) / sqrt(running_var + eps) "
                            "* weight + bias, with (C,) vectors viewed as (1, C, 1, 1).")
        if torch.allclose(out.float(), expected, rtol=1e-5, atol=1e-4):
            continue

        def frozen_bn(w: Tensor, b: Tensor, m: Tensor, std: Tensor) -> Tensor:
            def per_channel(v: Tensor) -> Tensor:
                return v[None, :, None, None]                              # (1, C, 1, 1)
            return (x - per_channel(m)) / per_channel(std) * per_channel(w) + per_channel(b)

        batch_mean, batch_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        hint = mistake(out, expected, [
            (lambda: frozen_bn(weight, bias, mean, var.sqrt()),
             f"right except where running_var is tiny (channel 0 has 1e-6): add eps (= {eps}) to the "
             "variance before the square root."),
            (lambda: frozen_bn(weight, bias, mean, (var + 1e-5).sqrt()),
             f"use the `eps` argument (here {eps:g}), not a hard-coded 1e-5."),
            (lambda: frozen_bn(weight, bias, mean, var.sqrt() + eps),
             "eps goes inside the square root: sqrt(running_var + eps), not sqrt(running_var) + eps."),
            (lambda: frozen_bn(weight, bias, mean, var + eps),
             "divide by the standard deviation sqrt(running_var + eps), not by the variance."),
            (lambda: frozen_bn(weight, bias, batch_mean, (batch_var + eps).sqrt()),
             "you normalised with the batch's own statistics. Frozen BN uses the stored running_mean "
             "and running_var, whatever the batch is."),
            (lambda: frozen_bn(bias, weight, mean, (var + eps).sqrt()),
             "weight and bias are swapped: weight scales the normalised x, bias is added after."),
            (lambda: frozen_bn(weight, bias, torch.zeros(c), (var + eps).sqrt()),
             "subtract running_mean before dividing: (x - running_mean) / sqrt(running_var + eps)."),
            (lambda: frozen_bn(torch.ones(c), bias, mean, (var + eps).sqrt()),
             "multiply the normalised x by weight (the learned scale)."),
            (lambda: frozen_bn(weight, torch.zeros(c), mean, (var + eps).sqrt()),
             "add bias (the learned shift) at the end."),
        ], rtol=1e-5, atol=1e-4)
        if hint is None and torch.allclose(out.float().mean(dim=(0, 2, 3)), bias, atol=1e-3):
            hint = ("you normalised with the batch's own statistics (its mean is removed). Frozen BN uses "
                    "the stored running_mean and running_var, whatever the batch is.")
        return verdict(False, hint or "y = (x - running_mean) / sqrt(running_var + eps) * weight + bias; "
                       "check the square root (var, not std) and the (1, C, 1, 1) broadcasting.")
    return verdict(True, name)


# ----------------------------------------------------------------------------- mask downsampling

def reference_downsample_mask(padding_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H, W) bool, True on padding -> (B, h, w) bool by nearest interpolation, as Backbone does."""
    return F.interpolate(padding_mask[None].float(), size=size)[0].bool()


def _mask_cases() -> list[tuple[Tensor, tuple[int, int]]]:
    """Padded batches with the feature sizes a stride-32 or stride-16 backbone gives them.

    The last two put an image's edge between the pixels that floor, ceil and round would pick: with
    100 px and 7 cells, cell i takes pixel floor(i * 100 / 7) = 0, 14, 28, 42, 57, 71, 85, where ceil
    and round give 43 for cell 3 and ceil gives 72 for cell 5, and i * (100 // 7) gives 56 for cell 4;
    images 72, 43 and 57 px wide (then high) end right there. At 18 px, cell 1 (pixels 14..28) is
    mostly padding: a majority vote (average pooling, bilinear > 0.5) marks it, floor and ceil don't."""
    cases = []
    edges = [100, 72, 43, 57, 18]
    for image_sizes, stride in (([(120, 128), (128, 80)], 32), ([(100, 150), (70, 160), (130, 64)], 32),
                                ([(64, 96), (40, 100)], 16), ([(64, w) for w in edges], 16),
                                ([(h, 64) for h in edges], 16)):
        h_max, w_max = max(s[0] for s in image_sizes), max(s[1] for s in image_sizes)
        mask = torch.ones(len(image_sizes), h_max, w_max, dtype=torch.bool)
        for i, (h, w) in enumerate(image_sizes):
            mask[i, :h, :w] = False
        cases.append((mask, (math.ceil(h_max / stride), math.ceil(w_max / stride))))
    return cases


def check_downsample_mask(fn: Callable[[Tensor, tuple[int, int]], Tensor]) -> bool:
    """fn(padding_mask (B, H, W) bool True on padding, size (h, w)) -> (B, h, w) bool, True where the
    feature cell is padding. Compared with what detr_full.backbone.Backbone does."""
    name = "matches the mask detr_full.backbone.Backbone returns"
    interpolate_hint = ("F.interpolate wants a float (N, C, H, W) input, so add a dimension, convert, "
                        "interpolate to `size`, then back to bool.")
    for mask, size in _mask_cases():
        out, error = call(fn, mask.clone(), size)
        if error:
            return failure(error, interpolate_hint)
        batch, (h, w) = mask.shape[0], size
        problem = shape_problem(out, (batch, h, w))
        if problem and isinstance(out, Tensor):
            if tuple(out.shape) == (batch, w, h):
                problem = f"expected shape {(batch, h, w)}, got {tuple(out.shape)}: size is (h, w), height first."
            elif tuple(out.shape) == (batch, -(-mask.shape[1] // 32), -(-mask.shape[2] // 32)):
                problem = (f"expected shape {(batch, h, w)}, got {tuple(out.shape)}: go to the `size` you are "
                           "given; the stride is not always 32 (DC5 gives 16).")
            elif out.dim() == 4 and out.numel() == batch * h * w:
                problem = (f"expected shape {(batch, h, w)}, got {tuple(out.shape)}: drop the dimension you "
                           "added for F.interpolate ([0] or .squeeze()).")
        if problem:
            return verdict(False, f"{problem} Hint: {interpolate_hint}")
        expected = reference_downsample_mask(mask, size)
        if out.dtype != torch.bool:
            return verdict(False, f"return a bool tensor (True on padding), not {out.dtype}.")
        if torch.equal(out, expected):
            continue
        as_float = mask[:, None].float()                                   # (B, 1, H, W)
        big_h, big_w = mask.shape[1:]

        def sampled(rows: Tensor, cols: Tensor) -> Tensor:
            """The mask at pixel rows[i], cols[j] for cell (i, j), indices clamped into the image."""
            return mask[:, rows.long().clamp(max=big_h - 1)][:, :, cols.long().clamp(max=big_w - 1)]

        def rounded(how: Callable[[Tensor], Tensor]) -> Tensor:
            return sampled(how(torch.arange(h) * big_h / h), how(torch.arange(w) * big_w / w))

        floor = "nearest takes pixel floor(i * H / h) for cell i (F.interpolate's default mode)"
        majority = ("a cell came out as padding when most of its pixels are (as average pooling or bilinear "
                    f"interpolation, then > 0.5, give); Backbone samples one pixel per cell: {floor}.")
        hint = mistake(out.float(), expected.float(), [
            (lambda: ~expected, "the polarity is inverted: True must mean padding, as in the input mask."),
            (lambda: rounded(torch.ceil), f"you rounded i * H / h up (ceil); {floor}: round down."),
            (lambda: rounded(torch.round), f"you rounded i * H / h to the nearest integer; {floor}: round down."),
            (lambda: sampled(torch.arange(h) * (big_h // h), torch.arange(w) * (big_w // w)),
             f"you stepped by the whole stride H // h, which drifts when H / h is not whole; {floor}."),
            (lambda: F.adaptive_max_pool2d(as_float, size)[:, 0],
             "a cell came out as padding when any of its pixels is (as max pooling, or sampling each cell's "
             "last pixel, gives); Backbone samples one pixel per cell, the first: nearest interpolation "
             "(F.interpolate's default mode) takes pixel floor(i * H / h)."),
            (lambda: F.adaptive_avg_pool2d(as_float, size)[:, 0] > 0.5, majority),
            (lambda: F.interpolate(as_float, size=size, mode="bilinear")[:, 0] > 0.5, majority),
            (lambda: F.interpolate(as_float, size=size, mode="nearest-exact")[:, 0],
             "you sampled each cell's centre (mode 'nearest-exact'); Backbone uses F.interpolate's default "
             "'nearest', which takes pixel floor(i * H / h)."),
        ], atol=0)
        hint = hint or ("use nearest interpolation (F.interpolate's default mode): feature cell i takes "
                        "the mask value at pixel floor(i * H / h), like the features' own sampling grid.")
        return verdict(False, f"for a {tuple(mask.shape)} mask and size {size}: {hint}")
    return verdict(True, name)


# ----------------------------------------------------------------------------- feature map size

def reference_feature_size(height: int, width: int, dilation: bool = False) -> tuple[int, int]:
    """(h, w) of a torchvision ResNet-50's layer4 output for an (height, width) input.

    Each of the 5 stride-2 steps (conv1, maxpool, layer2, layer3, layer4) maps n -> ceil(n / 2),
    because they pad; DC5 (`dilation`) replaces layer4's stride by a dilation."""
    stride = 16 if dilation else 32
    return math.ceil(height / stride), math.ceil(width / stride)


def check_feature_size(fn: Callable[[int, int, bool], tuple[int, int]]) -> bool:
    """fn(height, width, dilation) -> (h, w) of ResNet-50's last feature map (stride 32, or 16 with
    DC5). Compared with the real backbone's arithmetic on sizes that are not multiples of 32."""
    name = "feature map size of the ResNet-50 backbone, with and without DC5"
    cases = [(800, 1066, False), (800, 1066, True), (33, 64, False), (100, 129, False), (128, 96, True),
             (17, 15, True), (480, 640, False), (1, 1, False)]
    for height, width, dilation in cases:
        out, error = call(fn, height, width, dilation)
        if error:
            return failure(error, "5 stride-2 steps (4 with DC5), each n -> ceil(n / 2).")
        if out is None:
            return verdict(False, "the function returns None; return a pair (h, w).")
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError, RuntimeError):
            return verdict(False, f"expected a pair of ints (h, w), got {out!r}.")
        if len(values) != 2:
            return verdict(False, f"expected a pair (h, w), got {len(values)} values: {out!r}.")
        if not all(v.is_integer() for v in values):
            return verdict(False, f"for {height}x{width} you returned {out!r}: a feature map has a whole number "
                            "of cells; each stride-2 layer rounds n / 2 up (ceil).")
        got = tuple(int(v) for v in values)
        expected = reference_feature_size(height, width, dilation)
        if got == expected:
            continue
        stride = 16 if dilation else 32
        if got == (height // stride, width // stride):
            side, cells = (height, expected[0]) if got[0] != expected[0] else (width, expected[1])
            hint = ("the stride-2 layers pad their input, so each one rounds up, n -> ceil(n / 2): take the "
                    f"ceiling, not the floor or the nearest integer. {side} px give ceil({side} / {stride}) "
                    f"= {cells} cells.")
        elif dilation and got == reference_feature_size(height, width, False):
            hint = "with dilation=True (DC5) layer4 keeps its input size: the output stride is 16, not 32."
        elif got == (math.ceil(height / (32 if dilation else 16)), math.ceil(width / (32 if dilation else 16))):
            hint = "dilation is the other way round: without it the stride is 32, with DC5 (dilation=True) 16."
        elif dilation and got == (math.ceil(height / 8), math.ceil(width / 8)):
            hint = "DC5 dilates layer4 only: the output stride is 16 (one stride-2 step fewer), not 8."
        elif got == (height // stride + 1, width // stride + 1):
            side = next(n for n in (height, width) if n % stride == 0)
            hint = (f"n // {stride} + 1 is one cell too many when n is a multiple of {stride}: {side} px give "
                    f"exactly {side // stride} cells. Round up instead, ceil(n / {stride}) = (n + {stride - 1}) "
                    f"// {stride}.")
        elif got == expected[::-1]:
            hint = "height and width are swapped: return (h, w)."
        else:
            hint = "5 stride-2 steps (4 with DC5), each n -> ceil(n / 2)."
        return verdict(False, f"for {height}x{width} (dilation={dilation}) you returned {got}, "
                        f"expected {expected}: {hint}")
    return verdict(True, name)
