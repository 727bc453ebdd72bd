"""The successors' wing: the composed model with every option off is DETR, and each option's state-dict
keys are pinned (checkpoints written before still load)."""

import pytest
import torch

from detr_full import DETRConfig, build_detr
from detr_full.criterion import SetCriterion
from detr_full.detr import DETR
from detr_full.successors import SuccessorCriterion, SuccessorDETR

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=5, num_classes=4)


def test_every_option_off_is_detr_on_the_golden_fixture(golden_model, golden):
    composed = SuccessorDETR(golden_model.backbone, golden_model.transformer, golden_model.num_classes,
                             golden_model.num_queries, aux_loss=True).eval()
    composed.load_state_dict(golden_model.state_dict())
    inp = golden["inputs"]
    with torch.no_grad():
        ours, official = composed(inp["tensors"], inp["mask"]), golden_model(inp["tensors"], inp["mask"])
    assert set(ours) == set(official) == {"pred_logits", "pred_boxes", "aux_outputs", "decoder_layers"}
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(ours[key], official[key])
        assert torch.equal(ours["aux_outputs"][-1][key], official["aux_outputs"][-1][key])
    _, criterion, _ = build_detr(DETRConfig(**golden["config"]["overrides"]))
    successor = SuccessorCriterion(criterion.num_classes, criterion.matcher, criterion.weight_dict, criterion.eos_coef)
    losses, expected = successor(ours, golden["targets"]), criterion(official, golden["targets"])
    assert set(losses) == set(expected) and all(torch.equal(losses[k], expected[k]) for k in expected)


def test_the_builder_picks_the_official_model_when_every_option_is_off():
    model, criterion, _ = build_detr(DETRConfig(**TINY))
    assert type(model) is DETR and type(criterion) is SetCriterion
    model, criterion, _ = build_detr(DETRConfig(**TINY, focal_loss=True))       # a classification rule only
    assert type(model) is DETR and type(criterion) is SetCriterion
    model, criterion, _ = build_detr(DETRConfig(**TINY, spatial_prior=True))
    assert type(model) is SuccessorDETR and type(criterion) is SuccessorCriterion


# What each option adds to (or changes in) the official state dict of TINY; written before the wing was made.
_SELECTION_HEAD = {"query_selection.norm.weight": (32,), "query_selection.norm.bias": (32,),
                   "query_selection.class_embed.weight": (5, 32), "query_selection.class_embed.bias": (5,),
                   "query_selection.bbox_embed.layers.0.weight": (32, 32), "query_selection.bbox_embed.layers.0.bias": (32,),
                   "query_selection.bbox_embed.layers.1.weight": (32, 32), "query_selection.bbox_embed.layers.1.bias": (32,),
                   "query_selection.bbox_embed.layers.2.weight": (4, 32), "query_selection.bbox_embed.layers.2.bias": (4,)}
_POSITION_HEAD = {"position_head.0.weight": (32, 32), "position_head.0.bias": (32,),
                  "position_head.2.weight": (32, 32), "position_head.2.bias": (32,)}
OPTION_KEYS = {
    "spatial_prior": (dict(spatial_prior=True), {"spatial_prior.reference.weight": (5, 4)}),
    "anchor_queries": (dict(spatial_prior=True, anchor_queries=True),
                       {"spatial_prior.reference.weight": (5, 4),
                        **{f"anchor_queries.{k}": v for k, v in _POSITION_HEAD.items()}}),
    "query_selection": (dict(spatial_prior=True, query_selection=True), _SELECTION_HEAD),
    "fine_memory": (dict(fine_memory=True), {"fine_memory.level_embed": (32,), "fine_memory.input_proj.0.weight": (32, 256, 1, 1),
                                            "fine_memory.input_proj.0.bias": (32,), "fine_memory.input_proj.1.weight": (32,),
                                            "fine_memory.input_proj.1.bias": (32,)}),
    "dn_groups": (dict(spatial_prior=True, dn_groups=2),
                  {"spatial_prior.reference.weight": (5, 4), "denoising.label_embed.weight": (4, 32),
                   **{f"denoising.box_embed.{k}": v for k, v in _POSITION_HEAD.items()}}),
    "num_query_groups": (dict(num_query_groups=3), {"query_embed.weight": (15, 32)}),
    "focal_loss": (dict(focal_loss=True), {"class_embed.weight": (4, 32), "class_embed.bias": (4,)}),
    "conditional": (dict(spatial_prior=True, conditional=True),
                    {"spatial_prior.reference.weight": (5, 4), "conditional.query_scale.layers.0.weight": (32, 32),
                     "conditional.query_scale.layers.0.bias": (32,), "conditional.query_scale.layers.1.weight": (32, 32),
                     "conditional.query_scale.layers.1.bias": (32,), "conditional.query_proj.weight": (32, 32),
                     "conditional.query_proj.bias": (32,), "conditional.key_proj.weight": (32, 32),
                     "conditional.key_proj.bias": (32,)}),
}


@pytest.mark.parametrize("name", sorted(OPTION_KEYS))
def test_each_option_keeps_the_official_keys_and_adds_its_own(name):
    options, added = OPTION_KEYS[name]
    official = {k: tuple(v.shape) for k, v in build_detr(DETRConfig(**TINY))[0].state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in build_detr(DETRConfig(**TINY, **options))[0].state_dict().items()}
    assert ours == {**official, **added}
    assert list(ours)[:len(official)] == list(official)          # the official keys first, in their order
