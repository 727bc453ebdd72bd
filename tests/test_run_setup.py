"""run_setup: one place builds a run, and a run starts from the same state however it starts."""

import dataclasses

import pytest
import torch

from detr_full.config import ConfigError, TrainConfig
from detr_full.data.shapes import make_shapes
from detr_full.pretrain import PretrainConfig, ensure_pretrained
from detr_full.run_setup import loader_features, setup_run

TINY = dict(backbone="resnet18", backbone_stride=16, hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64,
            nheads=2, num_queries=5, batch_size=2, lr_backbone=0.0, scales="64", max_size=96, val_size=64,
            num_workers=0, device="cpu", pretrain_steps=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4)


def _start(cfg, cache):
    run = setup_run(cfg, pretrain_cache=cache, log=lambda message: None)
    return run, {k: v.clone() for k, v in run.model.state_dict().items()}, torch.get_rng_state()


def test_a_run_starts_from_the_same_state_with_or_without_the_cached_backbone(shapes, tmp_path):
    cfg = TrainConfig(**TINY, coco_path=str(shapes), pretrained_backbone="pretrain")
    fresh, weights, rng = _start(cfg, tmp_path)                  # pretrains the backbone first
    assert fresh.pretrain_wall_s > 0 and fresh.cfg.pretrained_backbone.startswith(str(tmp_path))
    cached, weights_cached, rng_cached = _start(cfg, tmp_path)   # finds it in the cache
    assert cached.cfg.pretrained_backbone == fresh.cfg.pretrained_backbone
    assert weights.keys() == weights_cached.keys() and all(torch.equal(weights[k], weights_cached[k]) for k in weights)
    assert torch.equal(rng, rng_cached)                          # the training draws the same random numbers
    path = dataclasses.replace(cfg, pretrained_backbone=fresh.cfg.pretrained_backbone)
    _, weights_path, rng_path = _start(path, tmp_path)          # given the file directly: the same again
    assert all(torch.equal(weights[k], weights_path[k]) for k in weights) and torch.equal(rng, rng_path)


def test_finding_the_cached_backbone_draws_no_random_number(shapes, tmp_path):
    pretrain = PretrainConfig(steps=2, short_side=64)
    ensure_pretrained(shapes, pretrain, tmp_path, progress=False)
    state = torch.get_rng_state()
    ensure_pretrained(shapes, pretrain, tmp_path, progress=False)
    assert torch.equal(state, torch.get_rng_state())


def test_the_run_holds_what_training_needs(shapes):
    run = setup_run(TrainConfig(**TINY, coco_path=str(shapes), warmup_steps=100), log=lambda message: None)
    assert run.cfg.num_classes == 19 and run.categories[1] == "circle"        # max id + 1, from the annotations
    assert len(run.train_set) == 8 and len(run.val_set) == 4
    assert [g["lr"] for g in run.optimizer.param_groups] == pytest.approx([1e-4 / 100, 0.0])  # warm-up, frozen ResNet
    images, mask, targets = next(iter(run.train_loader(epoch=0)))
    assert images.shape[:2] == (2, 3) and mask.dtype == torch.bool and len(targets) == 2
    assert sum(len(b[2]) for b in run.val_loader()) == 4
    with pytest.raises(ConfigError, match="too small"):
        setup_run(TrainConfig(**TINY, coco_path=str(shapes), num_classes=5), derive_num_classes=False)


def test_the_loader_runs_the_frozen_backbone_only_with_workers_on_the_cpu(shapes):
    run = setup_run(TrainConfig(**TINY, coco_path=str(shapes)), log=lambda message: None)
    backbone = run.model.backbone[0]
    workers = TrainConfig(**{**TINY, "num_workers": 1}, backbone_in_loader=True)
    assert loader_features(workers, run.model, torch.device("cpu")) == backbone.run
    assert loader_features(dataclasses.replace(workers, num_workers=0), run.model, torch.device("cpu")) is None
    assert loader_features(workers, run.model, torch.device("meta")) is None     # on a GPU the model runs it
    assert loader_features(dataclasses.replace(workers, backbone_in_loader=False), run.model, torch.device("cpu")) is None
    for p in backbone.parameters():
        p.requires_grad_(True)                                                   # a backbone that trains
    with pytest.raises(ConfigError, match="needs a frozen backbone"):
        loader_features(workers, run.model, torch.device("cpu"))
