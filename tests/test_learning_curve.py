"""learning_curve: the evaluation points, the diagnosis numbers, the steps it trains, the clocks."""

import pytest

from detr_full.config import TrainConfig
from detr_full.data.shapes import make_shapes
from detr_full.learning_curve import learning_curve
from detr_full.train import main

TINY = dict(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64, nheads=2,
            num_queries=5, batch_size=2, lr_backbone=0.0, scales="64", max_size=96, val_size=64,
            num_workers=0, device="cpu", warmup_steps=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4)


def test_points_at_zero_every_n_and_the_end(shapes):
    curve = learning_curve(TrainConfig(**TINY, coco_path=str(shapes)), steps=5, eval_every=2)
    assert [p["step"] for p in curve] == [0, 2, 4, 5]
    assert curve[0]["matching_instability"] is None and "train_loss" not in curve[0]
    for p in curve[1:]:
        assert 0 <= p["matching_instability"] <= 100 and p["train_loss"] > 0
        assert 0 <= p["val_class_error"] <= 100 and 0 <= p["AP50"] <= 1 and p["box_spread"] >= 0
    cpu = [p["cpu_min"] for p in curve]
    assert cpu[0] == 0 and all(a < b for a, b in zip(cpu, cpu[1:]))


def test_trains_the_same_batches_as_the_cli(shapes, tmp_path):
    """4 steps of learning_curve == the CLI's first 4 iterations (one epoch of 8 images in batches of 2):
    the same validation loss afterwards; with a weight EMA, both evaluate the same average."""
    val_loss = {}
    for ema_decay in (0.0, 0.9):
        settings = dict(TINY, coco_path=str(shapes), epochs=1, lr_drop=10, ema_decay=ema_decay)
        curve = learning_curve(TrainConfig(**settings), steps=4, eval_every=4)
        stats = main(TrainConfig(**settings, output_dir=str(tmp_path / str(ema_decay))))
        assert curve[-1]["val_loss"] == pytest.approx(stats["test_loss"], rel=1e-5)
        val_loss[ema_decay] = stats["test_loss"]
    assert val_loss[0.9] != pytest.approx(val_loss[0.0], rel=1e-4)      # the average is another model


def test_bad_budget_is_refused(shapes):
    with pytest.raises(ValueError, match="steps >= 1"):
        learning_curve(TrainConfig(**TINY, coco_path=str(shapes)), steps=0, eval_every=1)


def test_a_given_matcher_trains_and_keep_receives_the_trained_model(shapes):
    from detr_full.matcher import HungarianMatcher

    class Counting(HungarianMatcher):
        calls = 0

        def forward(self, outputs, targets):
            Counting.calls += 1
            return super().forward(outputs, targets)

    keep = {}
    matcher = Counting(1, 5, 2)
    learning_curve(TrainConfig(**TINY, coco_path=str(shapes)), steps=2, eval_every=2, matcher=matcher, keep=keep)
    assert keep["criterion"].matcher is matcher and Counting.calls > 0
    assert {"model", "postprocess", "val_set", "cfg"} <= set(keep)
    assert keep["cfg"].num_classes == 19      # derived from the annotations
