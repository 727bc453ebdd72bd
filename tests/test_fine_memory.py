"""detr_full.successors.fine_memory: the backbone's earlier stage, and who may attend to it."""

import dataclasses

import pytest
import torch

from detr_full.backbone import Backbone
from detr_full.build import build_detr
from detr_full.config import ConfigError, DETRConfig, TrainConfig, check_config
from detr_full.data.collate import BackboneCollate
from detr_full.successors.fine_memory import on_coarse_cells
from detr_full.successors.reference_boxes import ReferenceBoxes
from detr_full.successors.spatial_prior import SpatialPrior

TINY = DETRConfig(backbone="resnet18", backbone_stride=16, hidden_dim=32, enc_layers=1, dec_layers=2,
                  dim_feedforward=64, nheads=2, num_queries=3, num_classes=7, lr_backbone=0.0, dropout=0.0,
                  spatial_prior=True, query_selection=True, anchor_queries=True, fine_memory=True)


def images_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 80:] = True                                           # the second image is 80 px wide
    images = torch.randn(2, 3, 96, 128)
    images[1, :, :, 80:] = 0                                         # zero padding, as pad_images makes it
    return images, mask


def test_run_keeps_the_stage_before_the_last():
    backbone = Backbone("resnet18", train_backbone=False, stride=16, keep_fine=True).eval()
    images, mask = images_and_mask()
    out = backbone.run(images, mask)
    x = images
    body = backbone.folded_body()                                    # what a frozen backbone runs (backbone.py)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"):
        x = getattr(body, name)(x)
    torch.testing.assert_close(out.fine, x, rtol=0, atol=0)         # layer2: (2, 128, 12, 16), stride 8
    assert out.fine.shape == (2, 128, 12, 16) and out.features.shape == (2, 256, 6, 8)
    assert out.fine_mask.shape == (2, 12, 16) and out.fine_mask[1, :, 10:].all() and not out.fine_mask[1, :, :10].any()
    features, small_mask = backbone(images, mask)                    # forward is unchanged
    torch.testing.assert_close(features, out.features, rtol=0, atol=0)
    torch.testing.assert_close(small_mask, out.mask)
    assert Backbone("resnet18", train_backbone=False, stride=16).run(images, mask).fine is None


def test_only_the_layers_after_the_first_see_the_fine_level():
    model, _, _ = build_detr(TINY)
    model.eval()
    images, mask = images_and_mask()
    features = model.backbone[0].run(images, mask)
    with torch.no_grad():
        out = model(features, mask)
        noisy = model(features._replace(fine=features.fine + torch.randn_like(features.fine)), mask)
    torch.testing.assert_close(noisy["enc_outputs"]["pred_boxes"], out["enc_outputs"]["pred_boxes"])
    torch.testing.assert_close(noisy["aux_outputs"][0]["pred_boxes"], out["aux_outputs"][0]["pred_boxes"])
    assert not torch.allclose(noisy["pred_boxes"], out["pred_boxes"])
    torch.testing.assert_close(model(images, mask)["pred_boxes"], out["pred_boxes"])  # images or features: same


def test_the_loader_gives_the_model_the_fine_level():
    model, _, _ = build_detr(TINY)
    model.eval()
    images, mask = images_and_mask()
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    batch = [(images[i, :, :, :w], empty) for i, w in enumerate((128, 80))]
    features, padding_mask, _ = BackboneCollate(model.backbone[0].run)(batch)
    assert features.fine is not None
    with torch.no_grad():
        torch.testing.assert_close(model(features, padding_mask)["pred_boxes"], model(images, mask)["pred_boxes"])


def test_the_refined_bias_covers_both_levels():
    coarse, fine = torch.zeros(1, 2, 3, dtype=torch.bool), torch.zeros(1, 4, 6, dtype=torch.bool)
    reference = torch.tensor([[[0.25, 0.5, 0.2, 0.2]]])              # (B, Q, 4)
    grids = [[coarse], [coarse, fine]]                               # what the two layers read
    boxes = ReferenceBoxes(reference, lambda hs: torch.zeros(*hs.shape[:2], 4), [SpatialPrior.prior(grids)])
    _, first = boxes(None)
    assert first.shape == (1, 1, 6)                                  # the first layer: the encoded tokens only
    _, bias = boxes(torch.zeros(1, 1, 8))                            # a zero offset: the same box
    torch.testing.assert_close(bias, torch.cat([SpatialPrior.attention_bias(reference, coarse),
                                                SpatialPrior.attention_bias(reference, fine)], -1))
    # the fine token nearest the box centre (column 1 of 6 at x 0.25, rows 1-2 at y 0.5) is the most attended
    fine_bias = bias[0, 0, 6:].view(4, 6)
    assert fine_bias[1:3, 1].max() == fine_bias.max()


def test_bad_uses_are_clear_errors():
    with pytest.raises(ValueError, match="dec_layers >= 2; got 1"):
        build_detr(dataclasses.replace(TINY, dec_layers=1))
    with pytest.raises(ConfigError, match="dec_layers >= 2; got 1"):
        check_config(TrainConfig(fine_memory=True, dec_layers=1))
    model, _, _ = build_detr(TINY)
    images, mask = images_and_mask()
    plain = model.backbone[0].run(images, mask)._replace(fine=None, fine_mask=None)
    with pytest.raises(ValueError, match="must hold the fine level"):
        model(plain, mask)
    assert not any("fine_memory" in k for k in build_detr(dataclasses.replace(TINY, fine_memory=False))[0].state_dict())


def test_fine_cells_add_to_the_coarse_cell_holding_them():
    coarse = torch.tensor([1.0, 2.0, 3.0, 4.0])                      # 2 x 2 coarse cells
    fine = torch.arange(1.0, 10.0)                                   # 3 x 3 fine cells (an odd-sized image)
    folded = on_coarse_cells(torch.cat([coarse, fine]), (2, 2), (3, 3))
    # fine rows 0-1 / cols 0-1 -> cell (0, 0): 1 + 2 + 4 + 5; row 2 and col 2 -> the second row / column
    torch.testing.assert_close(folded, torch.tensor([[1.0 + 12, 2.0 + 9], [3.0 + 15, 4.0 + 9]]))
    weights = torch.rand(2, 5, 4 + 9).softmax(-1)                    # (B, Q, L + L2) attention rows
    torch.testing.assert_close(on_coarse_cells(weights, (2, 2), (3, 3)).sum((-2, -1)), torch.ones(2, 5))
