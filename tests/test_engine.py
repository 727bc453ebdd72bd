"""engine.py: one epoch trains and evaluates, log lines, non-finite losses.

A tiny DETR (resnet18, hidden 32, 1+1 layers, 5 queries) on 8 + 4 synthetic shapes images at 64 px.
"""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from detr_full.build import build_detr
from detr_full.config import TrainConfig, model_config
from detr_full.criterion import SetCriterion
from detr_full.data.coco import build_dataset, coco_api
from detr_full.data.collate import collate_fn
from detr_full.data.shapes import make_shapes
from detr_full.engine import NonFiniteLossError, evaluate, train_one_epoch
from detr_full.train import cli, main
from detr_full.viz import plot_logs, read_log

OFFICIAL_TRAIN_KEYS = {"train_lr", "train_class_error", "train_loss", "train_loss_ce", "train_loss_bbox",
                       "train_loss_giou", "train_loss_ce_unscaled", "train_loss_bbox_unscaled",
                       "train_loss_giou_unscaled", "train_class_error_unscaled",
                       "train_cardinality_error_unscaled"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4)


def tiny_config(coco_path, **overrides) -> TrainConfig:
    values = dict(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64, nheads=2,
                  num_queries=5, num_classes=19, batch_size=2, epochs=1, lr_drop=100, lr_backbone=0.0,
                  scales="64", max_size=96, val_size=64, num_workers=0, device="cpu", coco_path=str(coco_path))
    values.update(overrides)
    return TrainConfig(**values)


def tiny_setup(shapes, **overrides):
    cfg = tiny_config(shapes, **overrides)
    model, criterion, postprocess = build_detr(model_config(cfg))
    train_set = build_dataset("train", shapes, scales=[64], max_size=96, val_size=64)
    val_set = build_dataset("val", shapes, scales=[64], max_size=96, val_size=64)
    train_loader = DataLoader(train_set, batch_size=2, shuffle=False, collate_fn=collate_fn)
    val_loader = DataLoader(val_set, batch_size=2, collate_fn=collate_fn)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, criterion, postprocess, train_loader, val_loader, coco_api(val_set), optimizer


def test_one_epoch_trains_and_evaluates(shapes, capsys):
    model, criterion, postprocess, train_loader, val_loader, coco_gt, optimizer = tiny_setup(shapes)
    before = model.class_embed.weight.detach().clone()
    stats = train_one_epoch(model, criterion, train_loader, optimizer, "cpu", epoch=0, max_norm=0.1,
                            progress=False)
    assert not torch.equal(before, model.class_embed.weight)
    for k in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_unscaled", "class_error",
              "class_error_unscaled", "cardinality_error_unscaled", "lr"):
        assert k in stats and isinstance(stats[k], float), k
    assert stats["lr"] == pytest.approx(1e-4)
    # loss = the weighted sum of the terms (per iteration, hence also on average)
    assert stats["loss"] == pytest.approx(stats["loss_ce"] + stats["loss_bbox"] + stats["loss_giou"], rel=1e-6)
    assert stats["loss_bbox"] == pytest.approx(5 * stats["loss_bbox_unscaled"], rel=1e-6)

    test_stats, coco_eval = evaluate(model, criterion, postprocess, val_loader, coco_gt, "cpu", progress=False)
    assert len(test_stats["coco_eval_bbox"]) == 12
    assert all(-1.0 <= s <= 1.0 for s in test_stats["coco_eval_bbox"])
    assert list(coco_eval.stats) == test_stats["coco_eval_bbox"]
    assert "lr" not in test_stats and "loss_giou_unscaled" in test_stats
    assert sorted(coco_eval.params.imgIds) == sorted(coco_gt.getImgIds())
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in capsys.readouterr().out


def test_evaluate_without_detections(shapes):
    """A postprocess that keeps nothing must give COCO stats, not a pycocotools crash."""
    model, criterion, _, _, val_loader, coco_gt, _ = tiny_setup(shapes)

    def nothing(outputs, target_sizes):
        return [{"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
                for _ in target_sizes]

    stats, coco_eval = evaluate(model, criterion, nothing, val_loader, coco_gt, "cpu", progress=False)
    assert len(stats["coco_eval_bbox"]) == 12
    assert stats["coco_eval_bbox"][0] in (0.0, -1.0)


class _NaNCriterion(nn.Module):
    """The real criterion with loss_bbox replaced by NaN."""

    def __init__(self, criterion):
        super().__init__()
        self.criterion, self.weight_dict = criterion, criterion.weight_dict

    def forward(self, outputs, targets):
        losses = self.criterion(outputs, targets)
        losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses


def test_non_finite_loss_raises_before_the_update(shapes):
    model, criterion, _, train_loader, _, _, optimizer = tiny_setup(shapes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, iteration 0.*loss_bbox.*lower --lr"):
        train_one_epoch(model, _NaNCriterion(criterion), train_loader, optimizer, "cpu", epoch=3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_finite_outputs_raise(shapes):
    """NaN weights make NaN outputs; the matcher would fail in scipy, we stop with the clear error."""
    model, criterion, _, train_loader, _, _, optimizer = tiny_setup(shapes)
    with torch.no_grad():
        model.class_embed.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="pred_logits"):
        train_one_epoch(model, criterion, train_loader, optimizer, "cpu", epoch=0, progress=False)


def test_log_lines_plots_and_last_good_checkpoint(shapes, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    stats = main(tiny_config(shapes, dec_layers=2, output_dir=str(out)))
    [entry] = read_log(out)
    assert entry == json.loads(json.dumps(stats))
    keys = set(entry)
    assert OFFICIAL_TRAIN_KEYS <= keys
    assert {"train_loss_ce_0", "train_loss_bbox_0_unscaled", "train_cardinality_error_0_unscaled"} <= keys
    assert {k.replace("train_", "test_", 1) for k in OFFICIAL_TRAIN_KEYS - {"train_lr"}} <= keys
    assert "test_lr" not in keys
    assert len(entry["test_coco_eval_bbox"]) == 12
    assert entry["epoch"] == 0
    assert entry["n_parameters"] == sum(p.numel() for p in build_detr(model_config(
        tiny_config(shapes, dec_layers=2)))[0].parameters() if p.requires_grad)
    assert (out / "plots.png").stat().st_size > 0
    assert torch.load(out / "eval" / "latest.pth", weights_only=True)["precision"].dim() == 5
    fig = plot_logs([out], out=tmp_path / "again.png")
    assert len(fig.axes) == 3 and (tmp_path / "again.png").is_file()

    # A second epoch that diverges: the error names the term, epoch 0's checkpoint stays as it was.
    good = (out / "checkpoint.pth").read_bytes()
    real_forward = SetCriterion.forward

    def nan_forward(self, outputs, targets):
        losses = real_forward(self, outputs, targets)
        losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses

    monkeypatch.setattr(SetCriterion, "forward", nan_forward)
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        main(tiny_config(shapes, dec_layers=2, epochs=2, output_dir=str(out), resume=str(out / "checkpoint.pth")))
    assert (out / "checkpoint.pth").read_bytes() == good
    assert len(read_log(out)) == 1

    # From the command line: exit code 1 and the message, no traceback.
    argv = ["--coco_path", str(shapes), "--backbone", "resnet18", "--hidden_dim", "32", "--enc_layers", "1",
            "--dec_layers", "2", "--dim_feedforward", "64", "--nheads", "2", "--num_queries", "5",
            "--lr_backbone", "0", "--scales", "64", "--max_size", "96", "--val_size", "64", "--num_workers", "0",
            "--device", "cpu", "--epochs", "2", "--output_dir", str(out), "--resume", str(out / "checkpoint.pth")]
    capsys.readouterr()
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert "Training stopped: Non-finite training loss" in err and "Traceback" not in err
    assert (out / "checkpoint.pth").read_bytes() == good


class _NaNAtStep(nn.Module):
    """The real criterion, whose loss_bbox is NaN at the given calls (0-based)."""

    def __init__(self, criterion, bad_calls):
        super().__init__()
        self.criterion, self.weight_dict, self.bad_calls, self.calls = criterion, criterion.weight_dict, bad_calls, 0

    def forward(self, outputs, targets):
        losses = self.criterion(outputs, targets)
        if self.calls in self.bad_calls:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        self.calls += 1
        return losses


def test_reading_every_n_steps_trains_the_same_weights_and_logs_the_same_averages(shapes):
    runs = []
    for log_every in (1, 3):
        torch.manual_seed(0)
        model, criterion, _, train_loader, _, _, optimizer = tiny_setup(shapes)
        stats = train_one_epoch(model, criterion, train_loader, optimizer, "cpu", epoch=0, max_norm=0.1,
                                progress=False, log_every=log_every)
        runs.append((stats, model.state_dict()))
    (stats_1, weights_1), (stats_3, weights_3) = runs
    assert all(torch.equal(weights_1[k], weights_3[k]) for k in weights_1)          # the logging changes nothing
    assert stats_1.keys() == stats_3.keys()
    for k in stats_1:
        assert stats_3[k] == pytest.approx(stats_1[k], rel=1e-6), k                  # 4 steps: windows of 3 and 1


def test_a_fused_optimizer_skips_a_non_finite_step_on_the_device(shapes):
    """log_every > 1 with a fused AdamW: the bad step's update is never applied (found_inf), the next steps
    are, and the error arrives at the next read, naming the bad step."""
    torch.manual_seed(0)
    model, criterion, _, train_loader, _, _, _ = tiny_setup(shapes)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="epoch 2, iteration 1; its update was skipped"):
        train_one_epoch(model, _NaNAtStep(criterion, {1}), train_loader, optimizer, "cpu", epoch=2, progress=False,
                        log_every=4)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert optimizer.found_inf is None
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {3}                                   # 4 steps, the bad one skipped (AdamW's step count too)
    assert not all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_without_a_fused_optimizer_the_loss_is_read_every_step(shapes):
    torch.manual_seed(0)
    model, criterion, _, train_loader, _, _, optimizer = tiny_setup(shapes)
    with pytest.raises(NonFiniteLossError, match="epoch 0, iteration 2. The update was not applied"):
        train_one_epoch(model, _NaNAtStep(criterion, {2}), train_loader, optimizer, "cpu", epoch=0, progress=False,
                        log_every=4)
    assert {int(s["step"]) for s in optimizer.state.values()} == {2}


def _count_reads(fn, optimizer):
    """Run fn; count the values read from tensors to the host outside optimizer.step (whose step counters
    live on the host): item()/bool()/float()/int() (aten._local_scalar_dense), .tolist() and .numpy(),
    each of which would make the host wait for a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode
    counts = {"reads": 0, "in_step": False}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default and not counts["in_step"]:
                counts["reads"] += 1
            return func(*args, **(kwargs or {}))

    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def counted(name):
        def method(self, *args, **kwargs):
            counts["reads"] += 0 if counts["in_step"] else 1
            return originals[name](self, *args, **kwargs)
        return method

    step = optimizer.step

    def uncounted_step(*args, **kwargs):
        counts["in_step"] = True
        try:
            return step(*args, **kwargs)
        finally:
            counts["in_step"] = False

    try:
        optimizer.step = uncounted_step
        for name in originals:
            setattr(torch.Tensor, name, counted(name))
        with Count():
            fn()
    finally:
        del optimizer.step
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
    return counts["reads"]


def test_a_training_step_reads_back_twice_at_most(shapes):
    """The matching's cost to the host (1) and, with a non-fused optimizer, the loss's finiteness (1) per step;
    the logged values and the first bad step once per log_every steps (2); the epoch's averages once (1: a
    host tensor, counted here all the same)."""
    torch.manual_seed(0)
    model, criterion, _, train_loader, _, _, optimizer = tiny_setup(shapes)
    criterion.validate_targets = False                    # as a training run's (its collate checked the targets)
    batches = list(train_loader)                          # 4 batches, loaded (and checked) outside the count
    run = lambda: train_one_epoch(model, criterion, batches, optimizer, "cpu", epoch=0,  # noqa: E731
                                  progress=False, log_every=4)
    assert _count_reads(run, optimizer) == 2 * 4 + 2 + 1
    fused = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    run = lambda: train_one_epoch(model, criterion, batches, fused, "cpu", epoch=0,  # noqa: E731
                                  progress=False, log_every=4)
    assert _count_reads(run, fused) == 4 + 2 + 1           # the fused optimizer checks the loss on the device
