"""predict.py: results.json and drawings from our checkpoints, official ones and bare state_dicts."""

import dataclasses
import json

import pytest
import torch
from conftest import golden_path

from detr_full.build import build_detr
from detr_full.checkpoint import save_checkpoint
from detr_full.config import DETRConfig
from detr_full.data.shapes import make_shapes
from detr_full.predict import COCO_CLASSES, cli, config_from_checkpoint, predict

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64, nheads=2,
                  num_queries=5, num_classes=19)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=1, num_val=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as detr_full.train writes it (weights, args dict, categories)."""
    torch.manual_seed(0)
    model, _, _ = build_detr(TINY)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    save_checkpoint({"model": model.state_dict(), "args": dataclasses.asdict(TINY), "epoch": 0,
                     "categories": {1: "circle", 3: "square", 7: "triangle", 12: "star", 18: "cross"}}, path)
    return path


def test_predict_writes_results_and_pngs(checkpoint, shapes, tmp_path, capsys):
    images = sorted((shapes / "val2017").iterdir())[:2]
    out = tmp_path / "preds"
    rc = cli(["--resume", str(checkpoint), *map(str, images), "--out", str(out), "--threshold", "0",
              "--device", "cpu", "--size", "64", "--max_size", "96"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 2 * TINY.num_queries  # threshold 0 keeps every query
    assert {r["file_name"] for r in results} == {p.name for p in images}
    for r in results:
        assert set(r) == {"file_name", "category_id", "category_name", "bbox", "score"}
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert 0 <= r["score"] <= 1
        known = {1: "circle", 3: "square", 7: "triangle", 12: "star", 18: "cross"}
        assert r["category_name"] == known.get(r["category_id"], str(r["category_id"]))
    for p in images:
        assert (out / f"{p.stem}.png").read_bytes()[:8] == PNG_MAGIC
    assert "detection(s)" in capsys.readouterr().out


def test_predict_threshold_and_folders(checkpoint, shapes, tmp_path):
    results = predict(checkpoint, [shapes / "val2017"], tmp_path, threshold=1.0, device="cpu", size=64, max_size=96)
    assert results == [] and json.loads((tmp_path / "results.json").read_text()) == []
    assert len(list(tmp_path.glob("*.png"))) == 3  # drawn even without detections


def test_predict_bad_input_exits_2(checkpoint, tmp_path, capsys):
    assert cli(["--resume", str(checkpoint), str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "not_an_image.png").write_text("hello")
    assert cli(["--resume", str(checkpoint), str(tmp_path / "not_an_image.png"), "--out", str(tmp_path)]) == 2
    assert cli(["--resume", str(tmp_path / "nope.pth"), str(tmp_path), "--out", str(tmp_path)]) == 2


def test_config_from_weights_only_state_dict():
    """The published checkpoints carry weights only: the architecture is read from the shapes."""
    cfg = dataclasses.replace(TINY, backbone="resnet34", enc_layers=2, dec_layers=3, dim_feedforward=48,
                              position_embedding="learned", num_queries=7, num_classes=11)
    model, _, _ = build_detr(cfg)
    found = config_from_checkpoint({"model": model.state_dict()}, "detr-r34-dc5-demo.pth")
    assert (found.backbone, found.enc_layers, found.dec_layers, found.dim_feedforward, found.position_embedding,
            found.num_queries, found.num_classes, found.hidden_dim, found.dilation) == (
        "resnet34", 2, 3, 48, "learned", 7, 11, 32, False)  # "dc5" in the name, but BasicBlocks cannot dilate
    # and the model it describes takes the weights strictly (nheads takes the official default 8)
    build_detr(found)[0].load_state_dict(model.state_dict())


def test_predict_official_checkpoint(shapes, tmp_path):
    """The official main.py's checkpoint (args as an argparse.Namespace, 91 COCO classes) works as is."""
    path = golden_path("reference_checkpoint_small.pth")
    results = predict(path, [sorted((shapes / "val2017").iterdir())[0]], tmp_path, threshold=0.0, device="cpu",
                      size=64, max_size=96)
    assert len(results) == 20  # its 20 queries
    names = set(COCO_CLASSES) - {"N/A"}
    assert all(r["category_name"] in names or r["category_name"].isdigit() for r in results)


OPTIONS = {  # every successor option, and the shapes recipe's four together
    "focal loss": dict(focal_loss=True),
    "query groups": dict(num_query_groups=3),
    "denoising": dict(spatial_prior=True, dn_groups=2),
    "conditional": dict(spatial_prior=True, conditional=True),
    "the recipe's four": dict(spatial_prior=True, query_selection=True, selection_nms=0.3, anchor_queries=True,
                              fine_memory=True, backbone_stride=16, dec_layers=2),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_predict_works_on_a_checkpoint_of_every_option(name, shapes, tmp_path):
    from detr_full.config import TrainConfig
    cfg = TrainConfig(**{**dataclasses.asdict(TINY), **OPTIONS[name]}, val_size=64, max_size=96)
    torch.manual_seed(0)
    model, _, _ = build_detr(cfg)
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": model.state_dict(), "args": dataclasses.asdict(cfg), "epoch": 0}, path)
    found = config_from_checkpoint(torch.load(path, weights_only=True), str(path))
    assert (found.num_classes, found.num_queries) == (19, 5)          # not the head's rows: K or K*Q
    assert all(getattr(found, k) == v for k, v in OPTIONS[name].items())
    results = predict(path, [sorted((shapes / "val2017").iterdir())[0]], tmp_path, threshold=0.0, device="cpu")
    assert len(results) == 5                                           # one detection per query, one group


def test_predict_resizes_as_the_run_that_wrote_the_checkpoint_evaluated(checkpoint, shapes, tmp_path, monkeypatch,
                                                                     capsys):
    import detr_full.predict as predict_module
    from detr_full.config import TrainConfig
    seen = []

    def load_and_watch(*args, **kwargs):
        model, *rest = load_predictor(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: seen.append(tuple(inputs[0].shape[-2:])))
        return (model, *rest)

    load_predictor = predict_module.load_predictor
    monkeypatch.setattr(predict_module, "load_predictor", load_and_watch)
    ours = tmp_path / "ours.pth"
    save_checkpoint({"model": build_detr(TINY)[0].state_dict(),
                     "args": dataclasses.asdict(TrainConfig(**dataclasses.asdict(TINY), val_size=64, max_size=80))}, ours)
    image = sorted((shapes / "val2017").iterdir())[0]                  # shapes images: 96..256 px a side
    predict(ours, [image], tmp_path, device="cpu")
    assert min(seen[-1]) <= 64 and max(seen[-1]) <= 80                 # the run's val_size and max_size
    assert "short side of 64 px, at most 80 px long (as the run that wrote the checkpoint" in capsys.readouterr().out
    predict(ours, [image], tmp_path, device="cpu", size=48, max_size=200)   # told otherwise
    assert min(seen[-1]) == 48
    predict(checkpoint, [image], tmp_path, device="cpu")              # args without sizes: the official 800
    assert min(seen[-1]) == 800 or max(seen[-1]) == 1333
