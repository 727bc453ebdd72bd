"""detr_full.successors.conditional: the conditional spatial query's term, by hand and in the model."""

import dataclasses
import math

import pytest
import torch

from detr_full.build import build_detr
from detr_full.config import ConfigError, DETRConfig
from detr_full.successors.anchor_queries import box_sine_embedding
from detr_full.successors.conditional import ConditionalSpatialQuery
from detr_full.successors.spatial_prior import SpatialPrior
from detr_full.transformer import Memory

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=3, num_classes=4, lr_backbone=0.0, dropout=0.0, spatial_prior=True, conditional=True)


def test_sine_of_a_point_is_half_the_width_per_coordinate():
    point = torch.tensor([[0.25, 0.5]])
    sine = box_sine_embedding(point, 8)                                  # 4 features for x, 4 for y
    x = torch.tensor([0.25 * 2 * math.pi, 0.25 * 2 * math.pi / 100])   # frequencies 10000^(2i/4), i = 0, 1
    torch.testing.assert_close(sine[0, :4], torch.cat([x.sin(), x.cos()]))


def test_the_spatial_term_by_hand():
    torch.manual_seed(0)
    module = ConditionalSpatialQuery(8, 2)
    boxes = torch.tensor([[[0.25, 0.5, 0.1, 0.1], [0.75, 0.25, 0.3, 0.2]]])   # (B=1, Q=2, 4)
    pos = torch.randn(1, 3, 8)                                               # (B, L=3, D)
    memory = Memory(torch.randn(1, 3, 8), pos, torch.zeros(1, 3, dtype=torch.bool))
    prior = module.prior([[memory], [memory]])
    previous = torch.randn(1, 2, 8)
    for layer, scale in ((0, torch.ones(1, 2, 8)), (1, module.query_scale(previous))):
        bias = prior(layer, boxes, None if layer == 0 else previous)         # (B, H, Q, L)
        assert bias.shape == (1, 2, 2, 3)
        query = module.query_proj(box_sine_embedding(boxes[..., :2], 8) * scale)    # (B, Q, D)
        key = module.key_proj(pos)                                           # (B, L, D)
        for head, part in enumerate((slice(0, 4), slice(4, 8))):            # D/H = 4 features per head
            expected = query[0, :, part] @ key[0, :, part].T / 2.0           # / sqrt(4)
            torch.testing.assert_close(bias[0, head], expected)
    assert not torch.allclose(prior(1, boxes, previous), prior(0, boxes, None))   # lambda = FFN(f) after layer 0


def test_the_model_adds_it_to_the_gaussian_in_every_layer():
    torch.manual_seed(0)
    model = build_detr(TINY)[0].eval()
    images, mask = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    biases, outputs = [], []
    layers = model.transformer.decoder.layers
    hooks = [layer.multihead_attn.register_forward_pre_hook(lambda m, a, kw: biases.append(kw["bias"]), with_kwargs=True)
             for layer in layers] + [layers[0].register_forward_hook(lambda m, a, out: outputs.append(out))]
    with torch.no_grad():
        out = model(images, mask)
        for h in hooks:
            h.remove()
        features, small_mask, pos = model.backbone(images, mask)
        memory = model.transformer.encode(model.input_proj(features), small_mask, pos)    # (1, 2 * 3, .)
        prior = model.conditional.prior([[memory], [memory]])
        references = [model.spatial_prior.boxes(3)[None], out["aux_outputs"][0]["pred_boxes"]]  # layer 0, 1
        previous = [None, model.transformer.decoder.norm(outputs[0])]       # what layer 1's queries are told from
        for layer, (bias, boxes) in enumerate(zip(biases, references)):
            assert bias.shape == (1, 2, 3, 6)                                  # per head: (B, H, Q, L)
            gaussian = SpatialPrior.attention_bias(boxes, small_mask)          # (B, Q, L)
            torch.testing.assert_close(bias, gaussian[:, None] + prior(layer, boxes, previous[layer]))


def test_it_needs_the_spatial_prior_and_is_off_by_default():
    with pytest.raises(ConfigError, match="conditional=True takes its reference points .* spatial_prior=False"):
        build_detr(dataclasses.replace(TINY, spatial_prior=False))
    assert not DETRConfig().conditional
    assert not any(k.startswith("conditional") for k in build_detr(dataclasses.replace(TINY, conditional=False))[0]
                   .state_dict())
