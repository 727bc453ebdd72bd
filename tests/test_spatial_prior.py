"""detr_full.spatial_prior: reference boxes, the Gaussian cross-attention bias, boxes relative to them."""

import dataclasses

import torch

from detr_full.build import build_detr
from detr_full.config import DETRConfig
from detr_full.successors.spatial_prior import SpatialPrior, grid_boxes, inverse_sigmoid, token_centres

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=4, num_classes=7, lr_backbone=0.0, dropout=0.0, spatial_prior=True)


def test_grid_by_hand():
    expected = torch.tensor([[0.25, 0.25, 0.3, 0.3], [0.75, 0.25, 0.3, 0.3], [0.25, 0.75, 0.3, 0.3],
                             [0.75, 0.75, 0.3, 0.3]])
    torch.testing.assert_close(grid_boxes(4), expected)


def test_token_centres_are_normalised_by_the_valid_region():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, 2:] = True                                            # the right half is padding
    xy = token_centres(mask)                                         # (1, 8, 2), row-major like flatten(2)
    torch.testing.assert_close(xy[0, :4, 0], torch.tensor([0.25, 0.75, 1.25, 1.75]))
    torch.testing.assert_close(xy[0, ::4, 1], torch.tensor([0.25, 0.75]))


def test_bias_is_zero_at_the_centre_and_minus_half_at_half_the_box():
    reference = torch.tensor([[0.25, 0.25, 0.5, 1.0]])               # w/2 = 0.25, h/2 = 0.5
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)                    # centres at 0.25 and 0.75
    bias = SpatialPrior.attention_bias(reference, mask)              # (1, 1, 4)
    # tokens (x, y): (.25,.25) -> 0; (.75,.25) -> dx = 2 half-widths -> -2; (.25,.75) -> dy = 1 -> -0.5
    torch.testing.assert_close(bias[0, 0], torch.tensor([0.0, -2.0, -0.5, -2.5]))


def test_a_narrow_prior_steers_the_cross_attention():
    model = build_detr(TINY)[0].eval()
    with torch.no_grad():
        model.spatial_prior.reference.weight.copy_(inverse_sigmoid(torch.tensor([[0.1, 0.1, 0.01, 0.01]] * 4)))
    attention = model.transformer.decoder.layers[0].multihead_attn
    attention.return_weights = True
    seen = {}
    attention.register_forward_hook(lambda module, args, out: seen.update(weights=out[1]))  # returns None
    model(torch.randn(1, 3, 128, 128))                               # stride 32: 4x4 tokens
    weights = seen["weights"][0]                                     # (Q, L)
    assert (weights[:, 0] > 0.99).all()                              # all on the top-left token, the nearest
    model.spatial_prior = None                                       # without the prior: spread out
    seen.clear()
    model(torch.randn(1, 3, 128, 128))
    assert (seen["weights"][0].max(-1).values < 0.9).all()


def test_boxes_are_predicted_relative_to_the_reference():
    model = build_detr(TINY)[0].eval()
    last = model.bbox_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    boxes = model(torch.randn(2, 3, 64, 64))["pred_boxes"]           # (2, 4, 4)
    torch.testing.assert_close(boxes, grid_boxes(4).expand(2, -1, -1), atol=1e-5, rtol=0)


def test_state_dict_adds_only_the_reference_boxes():
    prior = build_detr(TINY)[0].state_dict()
    plain = build_detr(dataclasses.replace(TINY, spatial_prior=False))[0].state_dict()
    assert [k for k in prior if k not in plain] == ["spatial_prior.reference.weight"]
    assert prior["spatial_prior.reference.weight"].shape == (4, 4)


def test_each_layer_starts_from_the_previous_layers_box():
    model = build_detr(TINY)[0].eval()                               # 2 decoder layers
    last = model.bbox_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, 0.0, 0.0, -1.0]))         # every layer: cx logit +1, h logit -1
    out = model(torch.randn(1, 3, 64, 64))
    layer0 = out["aux_outputs"][0]["pred_boxes"][0]                  # (Q, 4)
    shift = torch.tensor([1.0, 0.0, 0.0, -1.0])
    torch.testing.assert_close(layer0, (inverse_sigmoid(grid_boxes(4)) + shift).sigmoid())
    torch.testing.assert_close(out["pred_boxes"][0], (inverse_sigmoid(layer0) + shift).sigmoid())
