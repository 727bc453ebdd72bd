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


def _row(detector, seed, minutes, ap50, budget=12.0, **extra):
    return {"detector": detector, "seed": seed, "cpu_minutes": minutes, "ap50": ap50, "ap": ap50 / 2,
            "ap75": ap50 / 4, "aps": -1.0, "apm": 0.1, "apl": 0.2, "steps": 100, "params": 2_000_000,
            "data": str(peers.REPO / "data" / "shapes"), "recipe": "shapes_cpu", "minutes_budget": budget, **extra}


def test_the_summary_averages_over_seeds_per_budget_and_names_the_commands():
    rows = [_row("detr", 1, 6.2, 0.2, snapshots=[4.0]),                              # a snapshot taken late
            _row("detr", 1, 12.01, 0.6), _row("detr", 2, 12.03, 0.8),
            _row("fcos", 1, 12.0, 0.5, lr_scale=1.0, anchor_scale=0.5),
            _row("faster_rcnn", 2, 12.0, 0.1, lr_scale=1.0, anchor_scale=1.0, proposals="standard"),
            _row("retinanet", 1, 12.0, 0.3, lr_scale=2.0, anchor_scale=0.5)]                # a sweep's run
    text = peers.summary(rows)
    assert "| shapes | 12 | detr | 0.700 (0.600-0.800) | 0.350 |" in text           # two seeds: mean and range
    assert "| shapes | 4 | detr | 0.200 | 0.100 | 0.050 | - |" in text               # the snapshot, on its own
    assert text.index("| 12 | detr |") < text.index("| 12 | fcos |")               # best AP50 first
    assert peers.commands(rows) == [
        "python benchmarks/peers.py --recipe shapes_cpu --coco_path data/shapes --minutes 12 --snapshots 4 --seed 1 "
        "--detectors detr,fcos --lr_scale 1 --anchor_scale 0.5 --out peers.jsonl",
        "python benchmarks/peers.py --recipe shapes_cpu --coco_path data/shapes --minutes 12 --seed 1 "
        "--detectors retinanet --lr_scale 2 --anchor_scale 0.5 --out peers.jsonl",
        "python benchmarks/peers.py --recipe shapes_cpu --coco_path data/shapes --minutes 12 --seed 2 "
        "--detectors detr --out peers.jsonl",
        "python benchmarks/peers.py --recipe shapes_cpu --coco_path data/shapes --minutes 12 --seed 2 "
        "--detectors faster_rcnn --lr_scale 1 --anchor_scale 1 --proposals standard --out peers.jsonl"]
    assert "| shapes | 12 | faster_rcnn (800 px proposals) | 0.100 |" in text
    assert "| shapes | 12 | retinanet (lr x2) | 0.300 |" in text


def test_the_stored_runs_carry_each_rows_label_and_minutes_for_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "RESULTS", tmp_path)
    rows = [_row("detr", 1, 6.2, 0.2, snapshots=[4.0]), _row("fcos", 1, 12.0, 0.5, width=128, lr_scale=1.0)]
    stored = json.loads(peers.store("peers", rows).read_text())
    assert [(r["label"], r["minutes"]) for r in stored["results"]] == [("detr", 4.0), ("fcos (width 128)", 12.0)]
    assert stored["table"] == peers.summary(rows) and stored["command"] == "\n".join(peers.commands(rows))


def test_faster_rcnns_proposals_scale_with_the_image_area(tiny):
    model = peers.build_peer("faster_rcnn", tiny, num_classes=19, anchor_scale=1.0)
    assert model.rpn._pre_nms_top_n == {"training": 150, "testing": 150}        # (112 / 800)^2 x 2000 < the floor
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    trees = dataclasses.replace(tiny, scales="368,400,432")
    assert peers.proposal_counts(trees) == dict(rpn_pre_nms_top_n_train=583, rpn_post_nms_top_n_train=583,
                                                rpn_pre_nms_top_n_test=292, rpn_post_nms_top_n_test=292,
                                                box_batch_size_per_image=149)   # (432 / 800)^2 = 0.2916
    standard = peers.build_peer("faster_rcnn", tiny, num_classes=19, anchor_scale=1.0, proposals="standard")
    assert standard.rpn._post_nms_top_n == {"training": 2000, "testing": 1000}


def test_the_peers_width_sets_the_fpn_and_the_heads(tiny):
    narrow = peers.build_peer("faster_rcnn", tiny, num_classes=19, anchor_scale=1.0, width=128)
    assert narrow.backbone.out_channels == 128 and narrow.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    assert narrow.roi_heads.box_predictor.cls_score.out_features == 19
    standard = peers.build_peer("faster_rcnn", tiny, num_classes=19, anchor_scale=1.0)
    assert standard.roi_heads.box_head.fc7.out_features == 1024                 # torchvision's representation size
    assert peers.label({"detector": "fcos", "width": 128}) == "fcos (width 128)"
