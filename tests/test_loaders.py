"""data/loaders.py: the order depends only on (seed, epoch); the collate that runs the frozen ResNet."""

import pytest
import torch

from detr_full.config import TrainConfig
from detr_full.data.coco import build_dataset
from detr_full.data.collate import BackboneCollate, collate_fn
from detr_full.data.loaders import batch_collate, train_loader, val_loader
from detr_full.data.shapes import make_shapes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4)
    return build_dataset("train", root, val_size=64, scales=[64], max_size=96)


def _image_ids(loader) -> list[list[int]]:
    return [[int(t["image_id"]) for t in targets] for _, _, targets in loader]


def _dataset_ids(dataset) -> list[int]:
    return [int(dataset[i][1]["image_id"]) for i in range(len(dataset))]


def test_training_order_depends_on_seed_and_epoch_only(dataset):
    cfg = TrainConfig(batch_size=2, num_workers=0, seed=3)
    first = _image_ids(train_loader(dataset, cfg, epoch=0, distributed=False))
    assert first == _image_ids(train_loader(dataset, cfg, epoch=0, distributed=False))   # no hidden state
    assert len(first) == 4 and sorted(sum(first, [])) == sorted(_dataset_ids(dataset))
    assert first != _image_ids(train_loader(dataset, cfg, epoch=1, distributed=False))
    torch.manual_seed(123)                                  # the global stream does not pick the order
    assert first == _image_ids(train_loader(dataset, cfg, epoch=0, distributed=False))


def test_val_loader_keeps_the_dataset_order_and_every_image(dataset):
    ids = sum(_image_ids(val_loader(dataset, TrainConfig(batch_size=3, num_workers=0), distributed=False)), [])
    assert ids == _dataset_ids(dataset)                     # 8 images in batches of 3, 3 and 2


def test_the_collate_runs_the_features_it_is_given():
    assert batch_collate(None) is collate_fn
    collate = batch_collate(lambda images, mask: images.mean())
    assert isinstance(collate, BackboneCollate)
    features, _, _ = collate([(torch.ones(3, 4, 4), {"labels": torch.tensor([1]), "boxes": torch.full((1, 4), .5)})])
    assert features == 1.0
