import pytest
import torch

from detr_full import DETRConfig, build_detr
from detr_full.detr import MLP

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=5, num_classes=4)


def _rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def test_golden_outputs_and_aux_outputs(golden_model, golden):
    inp, ref = golden["inputs"], golden["outputs"]
    with torch.no_grad():
        out = golden_model(inp["tensors"], inp["mask"])
    pairs = [(out, ref)] + list(zip(out["aux_outputs"], ref["aux_outputs"], strict=True))
    for ours, theirs in pairs:
        for key in ("pred_logits", "pred_boxes"):
            assert _rel_err(ours[key], theirs[key]) <= 5e-4, key


def test_golden_gradients(golden):
    model, criterion, _ = build_detr(DETRConfig(**golden["config"]["overrides"]))
    model.load_state_dict({k: v.float() for k, v in golden["state_dict"].items()})
    model.eval()  # the fixture backpropagates in eval mode: no dropout
    inp = golden["inputs"]
    loss = criterion.total_loss(criterion(model(inp["tensors"], inp["mask"]), golden["targets"]))
    torch.testing.assert_close(loss, golden["total_loss"], rtol=1e-4, atol=1e-5)
    loss.backward()
    params = dict(model.named_parameters())
    groups = {  # tolerance per group: max abs err <= tol * max abs ref (golden/README.md)
        1e-3: ("class_embed", "bbox_embed", "transformer.decoder"),
        2e-2: ("transformer.encoder", "input_proj", "query_embed", "backbone.1"),
        5e-2: ("backbone.0",),
    }
    for tol, prefixes in groups.items():
        names = [n for n in golden["grads"] if n.startswith(prefixes)]
        assert names, prefixes
        err = max((params[n].grad - golden["grads"][n]).abs().max() for n in names)
        ref = max(golden["grads"][n].abs().max() for n in names)
        assert err <= tol * ref, (prefixes, err / ref)
    backbone = [n for n in golden["grads"] if n.startswith("backbone.0")]
    diff = torch.cat([(params[n].grad - golden["grads"][n]).flatten() for n in backbone])
    assert diff.norm() <= 2e-2 * torch.cat([golden["grads"][n].flatten() for n in backbone]).norm()
    total = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm()
    torch.testing.assert_close(total, golden["total_grad_norm"], rtol=1e-3, atol=0)


def test_golden_state_dict_has_the_official_keys_and_sizes(golden):
    model = build_detr(DETRConfig(**golden["config"]["overrides"]))[0]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in golden["state_dict"].items()}
    assert sum(p.numel() for p in model.parameters()) == golden["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == golden["num_trainable_parameters"]


def test_golden_mlp(golden):
    u = golden["units"]["mlp"]
    sd = u["state_dict"]
    mlp = MLP(sd["layers.0.weight"].shape[1], sd["layers.0.weight"].shape[0],
              sd[f"layers.{len(sd) // 2 - 1}.weight"].shape[0], len(sd) // 2)
    mlp.load_state_dict(sd)
    torch.testing.assert_close(mlp(u["input"]), u["output"], rtol=0, atol=1e-5)


def test_output_shapes_and_loss_names():
    model, criterion, postprocess = build_detr(DETRConfig(**TINY))
    images, mask = torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 32:] = True
    out = model(images, mask)
    assert out["pred_logits"].shape == (2, 5, 5) and out["pred_boxes"].shape == (2, 5, 4)
    assert len(out["aux_outputs"]) == 1
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .2, .2]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = criterion(out, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error",
                           "loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0"}
    assert set(criterion.weight_dict) == {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"}
    results = postprocess(out, torch.tensor([[64, 96], [32, 96]]))
    assert results[1]["boxes"].shape == (5, 4) and results[1]["boxes"][:, 3].max() <= 32


def test_no_aux_loss_and_bad_inputs():
    model = build_detr(DETRConfig(**TINY, aux_loss=False))[0]
    assert "aux_outputs" not in model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="padding_mask"):
        model(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64))


@pytest.mark.slow
def test_overfits_a_single_image():
    """The DETR authors' debugging advice: a model that cannot overfit one image has a bug."""
    torch.manual_seed(0)
    model, criterion, _ = build_detr(DETRConfig(**{**TINY, "num_queries": 10, "dropout": 0.0}, lr_backbone=0))
    images = torch.randn(1, 3, 64, 64)
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[.3, .3, .2, .3], [.7, .6, .3, .2]])}]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(200):
        loss = criterion.total_loss(criterion(model(images), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 5, (first, loss.item())
