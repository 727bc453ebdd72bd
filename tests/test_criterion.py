import pytest
import torch

from detr_full.criterion import SetCriterion
from detr_full.matcher import HungarianMatcher


def _assert_losses(ours, ref):
    assert set(ours) == set(ref)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)


def _criterion(num_classes, weight_dict, eos_coef=0.1):
    return SetCriterion(num_classes, HungarianMatcher(1, 5, 2), weight_dict, eos_coef)


def test_golden_losses_and_total(golden):
    criterion = _criterion(91, golden["weight_dict"], golden["eos_coef"])
    losses = criterion(golden["outputs"], golden["targets"])
    _assert_losses(losses, golden["losses"])
    torch.testing.assert_close(criterion.total_loss(losses), golden["total_loss"], rtol=1e-4, atol=1e-5)


def test_golden_unit_with_two_aux_layers(golden):
    u = golden["units"]["criterion"]
    criterion = _criterion(u["num_classes"], u["weight_dict"], u["eos_coef"])
    assert torch.equal(criterion.empty_weight, u["empty_weight"])
    _assert_losses(criterion(u["outputs"], u["targets"]), u["losses"])


def test_golden_all_empty_batch(golden):
    u = golden["units"]["criterion"]
    criterion = _criterion(u["num_classes"], {}, u["eos_coef"])
    outputs = {k: v for k, v in u["outputs"].items() if k != "aux_outputs"}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(3)]
    _assert_losses(criterion(outputs, empty), golden["units"]["criterion_all_empty"]["losses"])


def _batch(num_queries=6, num_classes=4):
    outputs = {"pred_logits": torch.randn(2, num_queries, num_classes + 1),
               "pred_boxes": torch.rand(2, num_queries, 4) * 0.4 + 0.2}
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .5, .3, .4]])},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[.5, .5, .5, .5]])}]
    return outputs, targets


def test_permuting_queries_leaves_the_loss_unchanged():
    criterion = _criterion(4, {})
    outputs, targets = _batch()
    perm = torch.randperm(6)
    permuted = {k: v[:, perm] for k, v in outputs.items()}
    _assert_losses(criterion(permuted, targets), criterion(outputs, targets))


def test_perfect_prediction_has_zero_box_losses_and_no_class_error():
    criterion = _criterion(4, {})
    _, targets = _batch()
    logits = torch.full((2, 3, 5), -10.0)
    logits[..., 4] = 10.0                                   # "no object" everywhere...
    boxes = torch.full((2, 3, 4), 0.5)
    for b, t in enumerate(targets):                         # ...except the first len(t) queries
        logits[b, : len(t["labels"]), 4] = -10.0
        logits[b, torch.arange(len(t["labels"])), t["labels"]] = 10.0
        boxes[b, : len(t["labels"])] = t["boxes"]
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0, abs=1e-6)
    assert losses["class_error"].item() == 0 and losses["cardinality_error"].item() == 0
    assert losses["loss_ce"].item() < 1e-3


def test_loss_bbox_is_normalised_by_the_number_of_boxes():
    criterion = _criterion(4, {})
    outputs = {"pred_logits": torch.zeros(1, 1, 5), "pred_boxes": torch.tensor([[[.5, .5, .2, .2]]])}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[.6, .5, .2, .4]])}]
    # |0.5-0.6| + |0.2-0.4| = 0.3 for one box
    assert criterion(outputs, targets)["loss_bbox"].item() == pytest.approx(0.3)


def test_eos_coef_weights_the_no_object_class():
    criterion = _criterion(2, {}, eos_coef=0.25)
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .5, .5]])}]
    # uniform logits: every query's CE is log 3; weighted mean over weights (1, 0.25) is still log 3
    losses = criterion(outputs, targets)
    assert losses["loss_ce"].item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    assert criterion.empty_weight.tolist() == [1, 1, 0.25]


def test_bad_targets_raise_clear_errors():
    criterion = _criterion(4, {})
    outputs, targets = _batch()
    targets[1]["boxes"] = torch.tensor([[.5, .5, -.1, .2]])
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[0\].*negative width or height"):
        criterion(outputs, targets)
    outputs, targets = _batch()
    targets[0]["labels"] = torch.tensor([1, 9])
    with pytest.raises(ValueError, match="max category id \\+ 1"):
        criterion(outputs, targets)


def test_matching_every_layer_at_once_gives_the_per_layer_losses_bit_for_bit():
    """readout_losses matches all layers in one call; each layer's terms equal those of its own matching."""
    criterion = _criterion(4, {})
    torch.manual_seed(3)
    layers = [_batch()[0] for _ in range(3)]
    _, targets = _batch()
    outputs = {**layers[-1], "aux_outputs": layers[:-1]}
    losses = criterion(outputs, targets)
    num_boxes = criterion.num_boxes(targets)
    for i, readout in enumerate(layers):
        suffix = "" if i == 2 else f"_{i}"
        expected = criterion.layer_losses(readout, targets, criterion.matcher(readout, targets), num_boxes,
                                          with_class_error=i == 2)
        for k, v in expected.items():
            assert torch.equal(losses[f"{k}{suffix}"], v), (k, suffix)


def test_targets_are_checked_only_while_validate_targets():
    criterion = _criterion(4, {})
    outputs, targets = _batch()
    targets[0]["labels"] = torch.tensor([1, 9])
    criterion.validate_targets = False                      # a training run: its collate checked them on the host
    with pytest.raises(RuntimeError, match="out of bounds"):  # unchecked: torch itself fails on the bad label
        criterion(outputs, targets)
    targets[0]["boxes"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="'boxes' must be \\(T, 4\\) and 'labels' \\(T,\\)"):   # shapes: always
        criterion(outputs, targets)


def test_the_criterion_of_six_decoder_layers_is_under_300_ops():
    """Every elementwise term is computed once for all layers' matched pairs: the op count (each one a kernel
    launch on a GPU) hardly grows with the number of layers (benchmarks/step_anatomy.py: the whole step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    criterion = _criterion(91, {})
    criterion.validate_targets = False
    layers = [{"pred_logits": torch.randn(4, 100, 92), "pred_boxes": torch.rand(4, 100, 4) * 0.4 + 0.2}
              for _ in range(6)]
    outputs = {**layers[-1], "aux_outputs": layers[:-1]}
    targets = [{"labels": torch.randint(1, 91, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.2} for n in (5, 6, 7, 8)]
    with Count():
        criterion(outputs, targets)
    assert Count.ops <= 300, Count.ops
