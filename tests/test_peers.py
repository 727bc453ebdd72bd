"""benchmarks/peers.py on tiny data: each detector trains within its CPU budget and its JSON line and
table row carry the fields the benchmark promises (issue: the comparison with torchvision's detectors)."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from detr_full.config import shapes_cpu_recipe
from detr_full.data.shapes import ensure_shapes

_spec = importlib.util.spec_from_file_location("peers", Path(__file__).parents[1] / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)

FIELDS = {"detector", "ap50", "ap", "aps", "apm", "apl", "cpu_minutes", "steps", "params"}


@pytest.fixture(scope="module")
def tiny():
    root = ensure_shapes(Path(__file__).parents[1] / "data" / "shapes_peers_test", num_train=8, num_val=2)
    # a random backbone (nothing to pretrain), small images, 2 layers: the format, not the result
    return dataclasses.replace(shapes_cpu_recipe(), coco_path=str(root), pretrained_backbone="", batch_size=2,
                               scales="96,112", max_size=128, val_size=96, warmup_steps=2, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["detr", *peers.PEERS])
def test_each_detector_trains_for_its_budget_and_reports_the_fields(tiny, detector):
    torch.set_num_threads(1)
    rows = peers.train_detr(tiny, 0.03, seed=0, snapshots=(0.01,)) if detector == "detr" else \
        peers.train_peer(detector, tiny, tiny.coco_path, 0.03, lr_scale=1.0, anchor_scale=1.0, seed=0, snapshots=(0.01,))
    assert len(rows) == 2                                             # the snapshot, then the end
    assert rows[0]["cpu_minutes"] >= 0.01 and rows[0]["steps"] <= rows[1]["steps"]
    row = rows[-1]
    assert FIELDS <= set(row) and row["detector"] == detector
    assert row["steps"] >= 1 and row["cpu_minutes"] >= 0.03          # it stops once the budget is spent
    assert all(-1 <= row[k] <= 1 for k in ("ap50", "ap", "aps", "apm", "apl"))
    assert row["params"] > 0
    json.dumps(row)                                                   # one JSON line
    assert f"| {detector} |" in peers.table([row])


def test_the_peers_schedule_warms_up_then_drops_once_at_three_quarters():
    assert peers._lr_at(0.0, 0, 10) == pytest.approx(0.1)
    assert peers._lr_at(0.5, 9, 10) == 1.0
    assert peers._lr_at(0.74, 500, 10) == 1.0
    assert peers._lr_at(0.75, 500, 10) == pytest.approx(0.1)


def test_the_anchors_are_torchvisions_rule_scaled_to_the_strides(tiny):
    model = peers.build_peer("retinanet", tiny, num_classes=19, anchor_scale=1.0)
    assert model.anchor_generator.sizes == ((32, 40, 51), (64, 81, 102), (128, 161, 203))  # 4 x stride x 2^(k/3)
    fcos = peers.build_peer("fcos", tiny, num_classes=19, anchor_scale=0.5)
    assert fcos.anchor_generator.sizes == ((4,), (8,), (16,))
    assert fcos.transform.min_size == (96, 112) and fcos.transform.max_size == 128
