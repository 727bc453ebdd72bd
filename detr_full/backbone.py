"""The backbone (a ResNet, as the paper's, or MobileNetV2) with frozen BatchNorm, and the Joiner that
adds position encodings.

Differences from the official `models/backbone.py`:
- no NestedTensor: `forward(images, padding_mask)` takes the mask (True on padding) explicitly;
- building never downloads anything: ImageNet weights are opt-in (`pretrained="imagenet"`, a path
  or a URL), where the official code always asks for them on rank 0;
- DC5 on resnet18/34 raises a clear ValueError instead of torchvision's NotImplementedError.
- Three opt-in options for training from random init (defaults = official behaviour):
  `frozen_bn=False` uses ordinary, trainable `nn.BatchNorm2d` (frozen ImageNet statistics mean
  nothing for a random network: every BN would be the identity forever);
  `train_stem=True` also trains conv1/bn1/layer1, which the official code freezes because
  pretrained, they are generic edge detectors, but random, they would stay random filters;
  `stride=16` (or 8) stops after layer3 (or layer2), giving a finer, cheaper feature map for small
  objects and small images (the official stride is 32: a 128 px image would give 4x4 tokens).
- `name="mobilenet_v2"` (not in the official code): torchvision's MobileNetV2 `features`, cut at the
  output stride asked for (32: all 19 blocks, 1280 channels; 16: 14 blocks, 96; 8: 7 blocks, 32),
  with its stem and the blocks before stride 8 frozen, as a ResNet's stem and layer1; ImageNet weights
  through torchvision's weights API, or offline from a carrier package (imagenet.py).
State-dict keys are the official ones (`backbone.0.body.*`, `backbone.1.*` for learned PE); with
`frozen_bn=False` the BN layers add their `num_batches_tracked` buffers, and a smaller `stride`
drops the `layer4` (and `layer3`) keys. MobileNetV2's body keys are its `features` index
(`backbone.0.body.13.conv.0.0.weight`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from detr_full.checkpoint import CheckpointError, load_checkpoint
from detr_full.imagenet import imagenet_state_dict

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES = RESNETS + ("mobilenet_v2",)

STRIDE_LAST_LAYER = {32: 4, 16: 3, 8: 2}  # output stride -> last ResNet stage kept
# MobileNetV2's `features`: output stride -> (blocks kept, channels out); blocks 0-3 run at stride <= 4
MOBILENET_BLOCKS = {32: (19, 1280), 16: (14, 96), 8: (7, 32)}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    With batches of 2 images per GPU, batch statistics are too noisy to train, so DETR keeps the
    ImageNet ones. eps = 1e-5 as in the official code (torchvision's own class used 0 back then).
    """

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # torchvision's BatchNorm2d checkpoints carry num_batches_tracked; we have no use for it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def affine(self) -> tuple[Tensor, Tensor]:
        """The (1, C, 1, 1) scale and shift the statistics amount to, computed once and kept until a
        buffer changes (a load, an in-place edit, a move to another device): 2 ops per call instead
        of 13, which adds up to hundreds of kernel launches per step in a ResNet-50."""
        key = (self.eps, *((t._version, t.data_ptr(), t.dtype) for t in
                           (self.weight, self.bias, self.running_mean, self.running_var)))
        if getattr(self, "_cached_key", None) != key:
            scale = self.weight * (self.running_var + self.eps).rsqrt()     # (C,)
            shift = self.bias - self.running_mean * scale                   # (C,)
            self._cached = (scale[None, :, None, None], shift[None, :, None, None])
            self._cached_key = key
        return self._cached

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        scale, shift = self.affine()
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class BackboneFeatures(NamedTuple):
    """A batch the ResNet has already seen, in place of its images: what `Backbone.run` returns. A
    loader makes it when `backbone_in_loader` is on (data/collate.py: BackboneCollate), so that the
    workers compute the features while the main process trains on the previous batch."""
    features: Tensor                 # (B, C, h, w)
    mask: Tensor                     # (B, h, w), True on padding
    fine: Optional[Tensor] = None    # (B, C/2, 2h, 2w): the stage before the last, with `keep_fine`
    fine_mask: Optional[Tensor] = None  # (B, 2h, 2w)

    def to(self, device: Union[torch.device, str], non_blocking: bool = False) -> BackboneFeatures:
        """Move the tensors, as `Tensor.to` does (so a batch moves the same way with or without it)."""
        return BackboneFeatures(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self))


class Backbone(nn.Module):
    """A torchvision ResNet up to layer4 (or MobileNetV2's features), returning its last feature map and
    the padding mask downsampled to it.

    `train_backbone=False` freezes every parameter; otherwise the stem and the stride-4 stage (a
    ResNet's layer1, MobileNetV2's blocks 0-3) stay frozen, as in the official code (they are
    generic edge detectors once pretrained), unless `train_stem`. `frozen_bn=False` uses trainable
    BatchNorm2d; `stride` 32 (official), 16 or 8 is the output stride: for a ResNet, 16 drops layer4,
    8 drops layer3 and layer4. `keep_fine`: `run` also returns the stage before the last, at half the
    stride (fine_memory.py), of `fine_channels` channels.
    """

    def __init__(self, name: str = "resnet50", train_backbone: bool = True, dilation: bool = False,
                 pretrained: str = "", frozen_bn: bool = True, train_stem: bool = False, stride: int = 32,
                 keep_fine: bool = False):
        super().__init__()
        if stride not in STRIDE_LAST_LAYER:
            raise ValueError(f"backbone stride={stride} is not supported; choose 32 (official), 16 or 8.")
        if dilation and stride != 32:
            raise ValueError("dilation=True (DC5) dilates layer4, which stride < 32 drops; use one or the other.")
        if name not in BACKBONES:
            raise ValueError(f"backbone={name!r} is not supported; choose one of {', '.join(BACKBONES)}.")
        if dilation and name not in ("resnet50", "resnet101"):
            raise ValueError(f"dilation=True (DC5) needs a Bottleneck ResNet (resnet50/101); {name} "
                             "cannot be dilated by torchvision. Drop --dilation or use --backbone resnet50.")
        norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        if name == "mobilenet_v2":
            blocks, self.num_channels = MOBILENET_BLOCKS[stride]
            features = torchvision.models.mobilenet_v2(weights=None, norm_layer=norm_layer).features
            self.body = nn.Sequential(OrderedDict((str(i), block) for i, block in enumerate(features[:blocks])))
            fine_stage, self.fine_channels = str(MOBILENET_BLOCKS[stride // 2][0] - 1) if stride > 8 else None, \
                MOBILENET_BLOCKS.get(stride // 2, (0, 0))[1]
            stem = {"0", "1", "2", "3"}                                         # stride <= 4
            trainable = (lambda param: train_stem or param.split(".")[0] not in stem)
        else:
            resnet = getattr(torchvision.models, name)(
                weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=norm_layer)
            last = STRIDE_LAST_LAYER[stride]
            dropped = {"avgpool", "fc"} | {f"layer{i}" for i in range(last + 1, 5)}
            self.body = nn.Sequential(OrderedDict((n, m) for n, m in resnet.named_children() if n not in dropped))
            basic = name in ("resnet18", "resnet34")                            # BasicBlock: expansion 1
            self.num_channels = (64 if basic else 256) * 2 ** (last - 1)        # 512 / 2048 at layer4
            fine_stage, self.fine_channels = f"layer{last - 1}", self.num_channels // 2
            trainable = (lambda param: train_stem or any(f"layer{i}" in param for i in (2, 3, 4)))
        if pretrained:
            weights = load_pretrained_weights(name, pretrained)
            check_backbone_weights(self.body, weights, pretrained, name)
            self.body.load_state_dict(weights, strict=False)  # extra keys (fc, dropped stages) are not used
        self.fine_stage = fine_stage if keep_fine else None
        if keep_fine and fine_stage is None:
            raise ValueError(f"keep_fine needs a stage before the last; {name} at stride {stride} has none kept.")
        # oneDNN's CPU convolutions are ~15% faster on channels-last tensors (benchmarks/bench_core.py);
        # the state-dict keys and values are unchanged, only the memory layout differs.
        self.body.to(memory_format=torch.channels_last)
        for param_name, param in self.body.named_parameters():
            if not train_backbone or not trainable(param_name):
                param.requires_grad_(False)

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W); padding_mask (B, H, W) True on padding -> (B, C, h, w), (B, h, w)."""
        out = self.run(images, padding_mask)
        return out.features, out.mask

    def run(self, images: Tensor, padding_mask: Tensor) -> BackboneFeatures:
        """`forward`'s two tensors, and with `keep_fine` also the stage before the last and its mask.
        A frozen backbone runs its BatchNorm folded into the convolutions (`folded_body`)."""
        x, fine = images.contiguous(memory_format=torch.channels_last), None
        body = self.folded_body() if self.frozen else self.body
        for name, stage in body.named_children():                           # what nn.Sequential does
            x = stage(x)
            if name == self.fine_stage:
                fine = x                                                    # (B, fine_channels, H/(stride/2), ...)
        return BackboneFeatures(x, _downsample(padding_mask, x), fine,     # x: (B, C, H/stride, W/stride)
                                None if fine is None else _downsample(padding_mask, fine))

    def folded_body(self) -> nn.Sequential:
        """The body with every frozen BatchNorm folded into the convolution before it (weight * scale,
        bias * scale + shift): the same function in one pass over memory instead of two (on a CPU 1.4x
        faster for the trees recipe's MobileNetV2, 1.04x for make train's ResNet-18: benchmarks/README.md,
        "Folded BatchNorm"); equal to the body's output
        within float rounding. Made once and kept until a weight changes (a load, a move); it is
        not a submodule, so the state dict keeps the official keys. Only for a frozen backbone."""
        tensors = list(self.body.parameters()) + list(self.body.buffers())
        key = tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != key:
            self.__dict__["_folded"] = cached = (key, fold_batchnorm(self.body))
        return cached[1]

    @property
    def frozen(self) -> bool:
        """Nothing in it can change in training: no trainable parameter, no BatchNorm statistics."""
        return not any(p.requires_grad for p in self.parameters()) and \
            not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())


@torch.no_grad()
def fold_batchnorm(body: nn.Module) -> nn.Module:
    """A copy of `body` in which every FrozenBatchNorm2d that directly follows a Conv2d among its
    parent's children (torchvision's ResNets: conv1, bn1, ...; MobileNetV2: conv, norm, activation)
    is folded into that convolution and replaced by an identity."""
    folded = copy.deepcopy(body)
    for parent in folded.modules():
        children = list(parent._modules.items())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                scale, shift = (v.flatten() for v in norm.affine())                   # (C,), (C,)
                fused = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size,   # no
                                           conv.stride, conv.padding, conv.dilation, conv.groups, bias=True,   # draw
                                           padding_mode=conv.padding_mode, device=conv.weight.device,          # from
                                           dtype=conv.weight.dtype)                                            # the RNG
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                fused.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
                fused.requires_grad_(False)
                setattr(parent, conv_name, fused.to(memory_format=torch.channels_last))
                setattr(parent, norm_name, nn.Identity())
    return folded


def _downsample(padding_mask: Tensor, features: Tensor) -> Tensor:
    """padding_mask (B, H, W) -> (B, h, w), nearest, at the size of features (B, C, h, w)."""
    return F.interpolate(padding_mask[None].float(), size=features.shape[-2:])[0].bool()


def load_pretrained_weights(name: str, source: str) -> dict[str, Tensor]:
    """Backbone weights with the body's key names, from "imagenet" (torchvision's weights API: imagenet.py),
    a local path or a URL."""
    weights = imagenet_state_dict(name) if source == "imagenet" else load_checkpoint(source)["model"]
    if name == "mobilenet_v2" and any(k.startswith("features.") for k in weights):   # torchvision's whole model
        weights = {k[len("features."):]: v for k, v in weights.items() if k.startswith("features.")}
    return weights


def check_backbone_weights(body: nn.Module, weights: dict[str, Tensor], source: str, name: str) -> None:
    """Raise a CheckpointError naming `source` unless `weights` has every parameter and statistic of
    `body` with its shape. Keys `body` does not use (the classifier `fc`, stages a smaller stride
    drops) are fine; `num_batches_tracked` is optional, as in torchvision's own files."""
    own = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in weights]
    mismatched = [f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})"
                  for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    if missing or mismatched:
        shown = (mismatched + missing)[:4]
        raise CheckpointError(
            f"Pretrained backbone weights {source} do not fit a {name} "
            f"({len(mismatched)} tensors with other shapes, {len(missing)} missing; e.g. {', '.join(shown)}). "
            f"Expected a torchvision {name} state_dict (a ResNet's conv1.weight, bn1.*, layer1.*, ...; MobileNetV2's "
            "features.*) up to the last stage kept by backbone_stride; pass --backbone with the architecture the "
            "file was made for, "
            "or make a matching one with `python -m detr_full.pretrain --backbone NAME`.")


class Joiner(nn.Sequential):
    """Backbone followed by a position encoding. An nn.Sequential only so that the state-dict keys
    are the official `backbone.0.*` (ResNet) and `backbone.1.*` (learned position encoding)."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels, self.fine_channels = backbone.num_channels, backbone.fine_channels

    def forward(self, images: Union[Tensor, BackboneFeatures], padding_mask: Optional[Tensor]
                ) -> tuple[Tensor, Tensor, Tensor]:
        """-> features (B, C, h, w), mask (B, h, w), pos (B, D, h, w) in the features' dtype.
        `images` may be the ResNet's output already (BackboneFeatures); then only the positions are made."""
        features, mask = (images.features, images.mask) if isinstance(images, BackboneFeatures) \
            else self[0](images, padding_mask)
        pos = self[1](mask).to(features.dtype)
        return features, mask, pos


def build_backbone(name: str, position_embedding: nn.Module, lr_backbone: float = 1e-5,
                   dilation: bool = False, pretrained: str = "", frozen_bn: bool = True,
                   train_stem: bool = False, stride: int = 32, keep_fine: bool = False) -> Joiner:
    return Joiner(Backbone(name, train_backbone=lr_backbone > 0, dilation=dilation,
                           pretrained=pretrained, frozen_bn=frozen_bn, train_stem=train_stem,
                           stride=stride, keep_fine=keep_fine), position_embedding)
