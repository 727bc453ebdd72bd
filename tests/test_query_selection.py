"""detr_full.successors.query_selection: token anchors, the top-Q selection, the encoder loss, what it may not do."""

import dataclasses

import pytest
import torch
from torch import nn

from detr_full.build import build_detr, loss_weights
from detr_full.classification import SoftmaxClassification
from detr_full.config import ConfigError, DETRConfig, TrainConfig, check_config
from detr_full.detr import MLP
from detr_full.successors.query_selection import QuerySelection, token_anchors

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=2, dim_feedforward=64, nheads=2,
                  num_queries=3, num_classes=7, lr_backbone=0.0, dropout=0.0, spatial_prior=True,
                  query_selection=True)
TARGETS = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3]])},
           {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def test_anchors_by_hand():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, 3] = True                                             # the last column is padding: 3 x 2 valid cells
    anchors = token_anchors(mask)                                    # (1, 8, 4), row-major
    third = 1 / 3
    torch.testing.assert_close(anchors[0, :4, 0], torch.tensor([0.5, 1.5, 2.5, 3.5]) * third)
    torch.testing.assert_close(anchors[0, ::4, 1], torch.tensor([0.25, 0.75]))
    # 2 cells of 1/3 wide, 2 cells of 1/2 high = the whole height
    torch.testing.assert_close(anchors[0, :, 2:], torch.tensor([[2 * third, 1.0]] * 8))


def selection(num_queries: int) -> QuerySelection:
    """A QuerySelection whose token t's class-0 logit is memory[t, 0] (other logits 0)."""
    select = QuerySelection(4, SoftmaxClassification(), 2, num_queries, MLP(4, 4, 4, 3))   # K = 2 + 1
    select.norm = nn.Identity()
    with torch.no_grad():
        select.class_embed.weight.zero_()
        select.class_embed.bias.zero_()
        select.class_embed.weight[0, 0] = 1.0
    return select


def test_the_most_confident_valid_tokens_are_selected_and_detached():
    select = selection(num_queries=2)
    memory = torch.zeros(1, 6, 4)
    memory[0, :, 0] = torch.tensor([1.0, 5.0, 9.0, 3.0, 0.0, 8.0])  # tokens 2 and 5 would win, but are padding
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    mask[0, :, 2] = True                                             # the last column is padding
    proposals = select(memory, mask)
    torch.testing.assert_close(proposals.reference, proposals.boxes[:, [1, 3]].detach())
    assert not proposals.reference.requires_grad and proposals.boxes.requires_grad
    assert proposals.logits.shape == (1, 6, 3) and proposals.boxes.shape == (1, 6, 4)


def test_too_few_tokens_is_a_clear_error():
    select = selection(num_queries=5)
    with pytest.raises(ValueError, match="5 of the encoder's 4 tokens"):
        select(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2, dtype=torch.bool))


def test_model_outputs_and_losses():
    torch.manual_seed(0)
    model, criterion, _ = build_detr(TINY)
    assert "spatial_prior.reference.weight" not in model.state_dict()  # the first boxes come from the encoder
    assert not model.spatial_prior.learned
    with pytest.raises(ValueError, match="no learned reference boxes"):
        model.spatial_prior.boxes(3)
    images, mask = torch.randn(2, 3, 96, 128), torch.zeros(2, 96, 128, dtype=torch.bool)
    out = model.train()(images, mask)
    assert out["enc_outputs"]["pred_logits"].shape == (2, 3 * 4, 8)  # L = (96/32) * (128/32) tokens, K = 7 + 1
    losses = criterion(out, TARGETS)
    weights = loss_weights(TINY)
    for term in ("loss_ce", "loss_bbox", "loss_giou"):
        assert weights[f"{term}_enc"] == weights[term] and f"{term}_enc" in losses

    # the decoder's losses do not reach the proposal heads (detached references); the encoder's do
    decoder_only = sum(losses[k] * w for k, w in weights.items() if not k.endswith("_enc"))
    decoder_only.backward(retain_graph=True)
    assert all(p.grad is None for p in model.query_selection.parameters())
    criterion.total_loss(losses).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.query_selection.parameters())


def test_the_decoder_starts_from_the_best_proposals():
    torch.manual_seed(0)
    model = build_detr(TINY)[0].eval()
    seen = []
    reference_boxes = model.reference_boxes
    model.reference_boxes = lambda *args: seen.append(reference_boxes(*args)) or seen[-1]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    enc = out["enc_outputs"]                                         # (1, 2 * 3, .) at stride 32
    best = enc["pred_logits"].softmax(-1)[..., :-1].max(-1).values.topk(TINY.num_queries).indices[0]
    torch.testing.assert_close(seen[0].boxes[0], enc["pred_boxes"][:, best])     # the first layer's boxes


def test_needs_the_spatial_prior_and_one_query_group():
    with pytest.raises(ValueError, match="spatial_prior=False"):
        build_detr(dataclasses.replace(TINY, spatial_prior=False))
    with pytest.raises(ValueError, match="num_query_groups=2: set num_query_groups to 1"):
        build_detr(dataclasses.replace(TINY, num_query_groups=2))
    with pytest.raises(ConfigError, match="query_selection=True proposes .* spatial_prior=False"):
        check_config(TrainConfig(query_selection=True))


def test_nms_prefers_proposals_that_do_not_overlap_a_better_one():
    select = selection(num_queries=3)
    select.nms_iou = 0.5
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2],
                          [0.7, 0.3, 0.2, 0.2], [0.1, 0.9, 0.1, 0.1]])
    score = torch.tensor([0.9, 0.8, 0.3, -1.0, 0.2])                # token 1 repeats token 0; token 3 is padding
    priority = select._diverse_top(boxes[None], score[None])[0]     # one image
    assert priority.topk(3).indices.tolist() == [0, 2, 4]
    assert priority.topk(5).indices.tolist() == [0, 2, 4, 1, 3]     # the suppressed token before the padding
    # two images: NMS never compares boxes of different images
    both = select._diverse_top(torch.stack([boxes, boxes.flip(0)]), torch.stack([score, score.flip(0)]))
    assert both[1].flip(0).topk(3).indices.tolist() == [0, 2, 4]


def test_selection_nms_is_an_iou_and_needs_query_selection():
    with pytest.raises(ConfigError, match="selection_nms=0.5"):
        check_config(TrainConfig(selection_nms=0.5))                # without query_selection
    with pytest.raises(ConfigError, match="selection_nms=1.5"):
        check_config(TrainConfig(spatial_prior=True, query_selection=True, selection_nms=1.5))
