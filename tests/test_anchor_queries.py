"""detr_full.anchor_queries: box embeddings, positions made from each layer's boxes, state dict."""

import dataclasses

import pytest
import torch

from detr_full.build import build_detr
from detr_full.config import DETRConfig
from detr_full.successors.anchor_queries import box_sine_embedding

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=3, dim_feedforward=64, nheads=2,
                  num_queries=4, num_classes=7, lr_backbone=0.0, dropout=0.0, spatial_prior=True,
                  anchor_queries=True)


def test_box_sine_embedding_separates_the_coordinates():
    emb = box_sine_embedding(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.9]]), 32)   # (2, 32)
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb[0, :24], emb[1, :24])                      # cx, cy, w: the same
    assert not torch.allclose(emb[0, 24:], emb[1, 24:])                       # h differs
    torch.testing.assert_close(emb[0, 0], torch.sin(torch.tensor(0.1 * 2 * torch.pi)))  # lowest frequency is 1


def decoder_inputs(model, *inputs):
    """The model's outputs on `inputs`, and the (content, query_pos) every decoder layer receives."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append((args[0], args[4])))
             for layer in model.transformer.decoder.layers]
    try:
        out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def test_every_layer_positions_come_from_that_layers_reference_box():
    torch.manual_seed(0)
    model = build_detr(TINY)[0].eval()
    with torch.no_grad():
        out, seen = decoder_inputs(model, torch.randn(2, 3, 64, 64))
        # layer 0 looks from the learned boxes; layer l + 1 from the boxes layer l predicted
        references = [model.spatial_prior.boxes(4).expand(2, -1, -1)] + [a["pred_boxes"] for a in out["aux_outputs"]]
        for (_, query_pos), boxes in zip(seen, references):
            torch.testing.assert_close(query_pos, model.anchor_queries(boxes))
        # the positions differ from layer to layer (they would not with a learned query_embed)
        assert not torch.allclose(seen[0][1], seen[1][1])
        # query_embed is the first layer's content, instead of DETR's zeros
        torch.testing.assert_close(seen[0][0], model.query_embed.weight.expand(2, -1, -1))


def test_moving_one_reference_box_moves_only_that_querys_position():
    model = build_detr(TINY)[0].eval()
    with torch.no_grad():
        _, before = decoder_inputs(model, torch.randn(1, 3, 64, 64))
        model.spatial_prior.reference.weight[2] += 1.0
        _, after = decoder_inputs(model, torch.randn(1, 3, 64, 64))
    changed = ~torch.isclose(before[0][1], after[0][1]).all(-1)[0]            # (Q,) at layer 0
    assert changed.tolist() == [False, False, True, False]


def test_state_dict_adds_only_the_position_head_and_inference_format_is_detrs():
    anchors = build_detr(TINY)[0]
    prior = build_detr(dataclasses.replace(TINY, anchor_queries=False))[0]
    added = [k for k in anchors.state_dict() if k not in prior.state_dict()]
    assert added and all(k.startswith("anchor_queries.position_head.") for k in added)
    assert prior.state_dict().keys() <= anchors.state_dict().keys()
    out = anchors.eval()(torch.randn(2, 3, 64, 64))
    assert out["pred_logits"].shape == (2, 4, 8) and out["pred_boxes"].shape == (2, 4, 4)
    assert len(out["aux_outputs"]) == 2


def test_denoising_queries_take_their_position_from_their_noised_box():
    cfg = dataclasses.replace(TINY, dn_groups=2)
    model = build_detr(cfg)[0].train()
    assert model.denoising.box_embed is None                                  # no second position head
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2]])}]
    torch.manual_seed(0)
    dn = model.denoising(targets)
    torch.manual_seed(0)
    _, seen = decoder_inputs(model, torch.zeros(1, 3, 64, 64), None, targets)
    torch.testing.assert_close(seen[0][1][:, :2], model.anchor_queries(dn.boxes))


def test_without_the_spatial_prior_it_is_refused():
    with pytest.raises(ValueError, match="spatial_prior=False: turn on spatial_prior"):
        build_detr(dataclasses.replace(TINY, spatial_prior=False))
