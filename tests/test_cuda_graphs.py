"""cuda_graphs.py: one graph per batch shape, eager where a shape is new; the padding that makes shapes few.
On the CPU the recording is a twin that only counts (the real one needs a CUDA device)."""

import pytest
import torch

from detr_full.build import build_detr
from detr_full.config import ConfigError, DETRConfig, TrainConfig, check_config
from detr_full.cuda_graphs import GraphedDETR
from detr_full.data.collate import pad_images

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=5, num_classes=4, dropout=0.0)


def test_a_shape_runs_eagerly_once_then_from_its_graph():
    torch.manual_seed(0)
    model = build_detr(TINY)[0]
    recorded = []

    def capture(module, sample_args):                  # the CPU twin of make_graphed_callables
        recorded.append(tuple(sample_args[0].shape))
        return module
    graphed = GraphedDETR(model, capture).train()
    small, large = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 96, 64)
    for images in (small, small, small, large, large):
        out = graphed(images)
        reference = model(images)
        assert set(out) == set(reference)
        torch.testing.assert_close(out["pred_boxes"], reference["pred_boxes"])
        torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"], reference["aux_outputs"][0]["pred_logits"])
    assert recorded == [(2, 3, 64, 64), (2, 3, 96, 64)]   # each shape recorded once, on its second batch
    graphed.eval()
    graphed(torch.randn(1, 3, 80, 80))
    assert len(recorded) == 2                              # evaluation: eager
    assert list(graphed.state_dict()) == [f"decoder.model.{k}" for k in model.state_dict()]   # the model, once


def test_padding_to_a_multiple_makes_shapes_few():
    images = [torch.ones(3, 100, 130), torch.ones(3, 90, 60)]
    tensors, mask = pad_images(images, pad_to=32)
    assert tensors.shape == (2, 3, 128, 160) and mask.shape == (2, 128, 160)
    assert not mask[0, :100, :130].any() and mask[0, 100:].all() and mask[0, :, 130:].all()
    assert pad_images(images)[0].shape == (2, 3, 100, 130)   # 1: the official padding to the largest image


def test_only_the_official_model_and_a_positive_multiple():
    with pytest.raises(ConfigError, match="cuda_graphs captures the official model.*spatial_prior"):
        check_config(TrainConfig(cuda_graphs=True, spatial_prior=True))
    with pytest.raises(ConfigError, match="pad_to must be >= 1"):
        check_config(TrainConfig(pad_to=0))
    check_config(TrainConfig(cuda_graphs=True, pad_to=128))
