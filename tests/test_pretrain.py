"""detr_full.pretrain: the classification data, deterministic training, the cache, and the weights
DETR's backbone loads (with clear errors for files that do not fit)."""

import json
import threading

import PIL.Image
import pytest
import torch

from detr_full import pretrain as pretrain_module
from detr_full.backbone import Backbone
from detr_full.checkpoint import CheckpointError, save_checkpoint
from detr_full.config import TrainConfig
from detr_full.data.prepared import maker_lock
from detr_full.data.shapes import make_shapes
from detr_full.pretrain import (BackboneClassifier, ClassificationSet, PretrainConfig, ensure_pretrained, pretrain,
                                pretrained_backbone_path)

FAST = PretrainConfig(steps=3, batch_size=4, warmup_steps=1, crop_size=32, image_size=48)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=6, num_val=3, workers=1)


@pytest.fixture
def squares(tmp_path):
    """One black 40x30 image with a white 10x10 square at (20, 10) (class id 7) and a 4x4 grey one
    at (2, 2) (class id 3)."""
    pixels = torch.zeros(30, 40, 3, dtype=torch.uint8)
    pixels[10:20, 20:30] = 255
    pixels[2:6, 2:6] = 128
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    PIL.Image.fromarray(pixels.numpy()).save(tmp_path / "train2017" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [20, 10, 10, 10]},
                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 2, 4, 4]}],
            "categories": [{"id": 3, "name": "small"}, {"id": 7, "name": "big"}]}
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return tmp_path


def unnormalise(images):
    from detr_full.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    return images * torch.tensor(IMAGENET_STD)[:, None, None] * 255 + torch.tensor(IMAGENET_MEAN)[:, None, None] * 255


def test_object_crop_is_centred_on_its_object(squares):
    data = ClassificationSet(squares, "train")
    assert data.category_ids == [3, 7]
    torch.testing.assert_close(data.objects[0], torch.tensor([0.0, 20, 10, 30, 20, 1, 30]))  # xyxy, class 1, short side
    images, labels = data.object_batch(torch.tensor([0]), crop=20, short_side=30, generator=None)
    assert images.shape == (1, 3, 20, 20) and labels.tolist() == [1]
    crop = unnormalise(images[0])[0]                           # (20, 20) at scale 1: pixels (15..35, 5..25)
    assert crop[6:14, 6:14].min() > 250                        # the square's inside, at the centre
    assert crop[1, 1] < 5 and crop[18, 18] < 5                 # black around it
    half = unnormalise(data.object_batch(torch.tensor([0]), crop=20, short_side=15, generator=None)[0][0])[0]
    assert half[8:12, 8:12].min() > 250 and half[5, 5] < 5     # half the scale: a 5-px square in 40 px of image
    big = unnormalise(data.object_batch(torch.tensor([0]), crop=20, short_side=300, generator=None)[0][0])[0]
    assert big[2:18, 2:18].min() > 250                         # 10x: would not fit; widened so it fills 90 %


def test_image_batch_has_multi_hot_labels_and_keeps_the_aspect(squares):
    data = ClassificationSet(squares, "train")
    images, labels = data.image_batch(torch.tensor([0]), size=20, generator=None)
    assert labels.tolist() == [[1.0, 1.0]]
    pixels = unnormalise(images[0])[0]                         # 40x30 -> 20x15, letterboxed: rows 15.. are padding
    assert pixels[15:].abs().max() < 1e-3 and pixels[7, 12] > 200   # the square now covers (10..15, 5..10)


def test_pretraining_is_deterministic_and_keeps_only_the_layers_detr_uses(shapes):
    a = pretrain(shapes, FAST, progress=False)
    b = pretrain(shapes, FAST, progress=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["categories"] == [1, 3, 7, 12, 18] and a["args"]["task"] == "objects"
    state = torch.get_rng_state()
    pretrain(shapes, FAST, progress=False)
    assert torch.equal(torch.get_rng_state(), state)   # a run that pretrains inits its model as a cached one
    assert "fc.weight" not in a["model"] and not any(k.startswith("layer4") for k in a["model"])  # stride 16


# What pretrain.REVISION gives: FAST's mean loss over its 3 steps on the `shapes` fixture, per task.
REVISION_GIVES = {3: {"objects": 1.19697, "multilabel": 0.55986}}


@pytest.mark.parametrize("task", ["objects", "multilabel"])
def test_pretraining_gives_what_its_revision_says(shapes, task):
    """The cache key holds pretrain.REVISION, not the code: a change that makes other weights from the
    same config and data must bump it, or old weights are reused under the new code's name."""
    loss = pretrain(shapes, PretrainConfig(**{**vars(FAST), "task": task}), progress=False)["history"][-1]["loss"]
    assert loss == pytest.approx(REVISION_GIVES[pretrain_module.REVISION][task], rel=1e-4), (
        f"pretraining now gives another loss ({loss:.5f}) than revision {pretrain_module.REVISION} did: if "
        "that is intended, bump REVISION in detr_full/pretrain.py and add what the new one gives here")


def test_the_callers_thread_count_changes_nothing_and_is_restored(shapes):
    """Pretraining runs on pretrain.THREADS threads: a caller on one thread (the tests, CI) and one
    on two (JupyterLab on this project's machines) make the same weights."""
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            weights.append(pretrain(shapes, FAST, progress=False)["model"])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_cache_key_holds_the_revision(shapes, tmp_path, monkeypatch):
    base = pretrain_module.cache_path(shapes, FAST, tmp_path)
    monkeypatch.setattr(pretrain_module, "REVISION", pretrain_module.REVISION + 1)
    assert pretrain_module.cache_path(shapes, FAST, tmp_path) != base


@pytest.mark.parametrize("task", ["objects", "multilabel"])
def test_loss_falls_on_a_fixed_batch(shapes, task):
    cfg = PretrainConfig(task=task, crop_size=32, image_size=48)
    data = ClassificationSet(shapes, "train")
    model = BackboneClassifier("resnet18", 16, 5)
    images, labels = pretrain_module._batch(data, torch.arange(4), cfg, None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = pretrain_module._loss(model(images), labels, task)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]


def test_detr_backbone_loads_the_pretrained_weights(shapes, tmp_path):
    path = ensure_pretrained(shapes, FAST, cache_dir=tmp_path, progress=False)
    weights = torch.load(path, weights_only=True)["model"]
    backbone = Backbone("resnet18", pretrained=str(path), stride=16)       # frozen BN, as in the paper
    own = backbone.body.state_dict()
    for k in ("conv1.weight", "layer3.1.conv2.weight", "layer2.0.bn1.running_var", "layer1.0.bn1.bias"):
        assert torch.equal(own[k], weights[k]), k


def test_cache_is_reused_then_rebuilt_when_corrupt(shapes, tmp_path, monkeypatch, capsys):
    path = ensure_pretrained(shapes, FAST, cache_dir=tmp_path, progress=False)
    assert "Pretraining the resnet18 backbone" in capsys.readouterr().out
    made = path.read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("the cached weights should have been reused")

    with monkeypatch.context() as m:
        m.setattr(pretrain_module, "pretrain", fail)
        assert ensure_pretrained(shapes, FAST, cache_dir=tmp_path, progress=False) == path
    path.write_bytes(made[: len(made) // 2])                               # a truncated file
    assert ensure_pretrained(shapes, FAST, cache_dir=tmp_path, progress=False) == path
    assert "unusable and will be rebuilt" in capsys.readouterr().err
    assert path.read_bytes() == made                                       # rebuilt, identical (same seed)


def test_a_second_maker_waits_for_the_first_then_reuses_its_weights(shapes, tmp_path, monkeypatch):
    made = ensure_pretrained(shapes, FAST, cache_dir=tmp_path / "elsewhere", progress=False)
    path = pretrain_module.cache_path(shapes, FAST, tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("the second maker should have reused the first one's weights")

    monkeypatch.setattr(pretrain_module, "pretrain", fail)
    result = {}
    with maker_lock(path):                                                 # the first maker, mid-pretraining
        second = threading.Thread(target=lambda: result.setdefault(
            "path", ensure_pretrained(shapes, FAST, cache_dir=tmp_path, progress=False)))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive()                                           # waiting, not pretraining
        path.write_bytes(made.read_bytes())                                # the first maker's weights
    second.join(timeout=30)
    assert result["path"] == path


def test_cache_key_follows_the_config_and_the_annotations(shapes, tmp_path):
    base = pretrain_module.cache_path(shapes, FAST, tmp_path)
    assert pretrain_module.cache_path(shapes, FAST, tmp_path) == base
    assert pretrain_module.cache_path(shapes, PretrainConfig(**{**vars(FAST), "seed": 1}), tmp_path) != base
    other = make_shapes(tmp_path / "other", num_train=6, num_val=3, seed=5, workers=1)
    assert pretrain_module.cache_path(other, FAST, tmp_path).name != base.name


def test_train_config_maps_onto_the_pretrain_config(shapes, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(pretrain_module, "ensure_pretrained", lambda root, cfg, cache_dir: seen.setdefault("cfg", cfg))
    cfg = TrainConfig(backbone="resnet34", backbone_stride=8, pretrain_task="multilabel", pretrain_steps=7, seed=3)
    pretrained_backbone_path(cfg, shapes, tmp_path)
    assert seen["cfg"] == PretrainConfig(backbone="resnet34", stride=8, task="multilabel", steps=7, short_side=800,
                                         seed=3)


def test_weights_for_another_architecture_name_the_file_and_the_keys(tmp_path):
    path = tmp_path / "r34.pth"
    save_checkpoint({"model": Backbone("resnet34", stride=16).body.state_dict()}, path)
    Backbone("resnet34", pretrained=str(path), stride=16)                  # fits its own architecture
    with pytest.raises(CheckpointError, match=r"r34\.pth do not fit a resnet18.*layer\d"):
        Backbone("resnet18", pretrained=str(path), stride=32)             # layer4 missing, shapes differ
    save_checkpoint({"model": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(CheckpointError, match=r"missing.*conv1.weight, bn1.*"):
        Backbone("resnet18", pretrained=str(path))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pth does not exist"):
        Backbone("resnet18", pretrained=str(tmp_path / "nowhere.pth"))


def test_unknown_task_is_rejected(shapes):
    with pytest.raises(ValueError, match="task must be one of"):
        pretrain(shapes, PretrainConfig(task="segmentation"), progress=False)


def test_the_classifier_comes_back_whole(shapes, tmp_path):
    path = ensure_pretrained(shapes, FAST, cache_dir=tmp_path, progress=False)
    model, ckpt = pretrain_module.load_classifier(path)
    data = ClassificationSet(shapes, "val", ckpt["categories"])
    images, _ = data.object_batch(torch.arange(2), FAST.crop_size, FAST.short_side, None)
    reference = BackboneClassifier("resnet18", 16, 5).eval()
    reference.backbone.body.load_state_dict(ckpt["model"])
    reference.fc.load_state_dict(ckpt["head"])
    torch.testing.assert_close(model(images), reference(images))
    save_checkpoint({"model": ckpt["model"]}, tmp_path / "body_only.pth")
    with pytest.raises(CheckpointError, match="backbone weights only"):
        pretrain_module.load_classifier(tmp_path / "body_only.pth")


def test_cli_writes_weights_and_reports_bad_input(shapes, tmp_path, capsys):
    out = tmp_path / "w.pth"
    assert pretrain_module.main(["--coco_path", str(shapes), "--out", str(out), "--steps", "2", "--batch_size", "2",
                                 "--warmup_steps", "1", "--crop_size", "32"]) == 0
    assert "--pretrained_backbone " + str(out) in capsys.readouterr().out
    Backbone("resnet18", pretrained=str(out), stride=16)
    assert pretrain_module.main(["--coco_path", str(tmp_path / "nowhere")]) == 2
    assert "instances_train2017.json does not exist" in capsys.readouterr().err
    assert pretrain_module.main(["--coco_path", str(shapes), "--task", "segmentation"]) == 2
    assert "task must be one of" in capsys.readouterr().err
