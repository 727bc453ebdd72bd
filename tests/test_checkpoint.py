import argparse
import os

import pytest
import torch

from conftest import golden_path
from detr_full import DETRConfig, build_detr
from detr_full.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint

TINY = DETRConfig(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32,
                  num_queries=5, num_classes=4)


def test_official_training_checkpoint_loads_safely_and_strictly(golden):
    ckpt = load_checkpoint(golden_path("reference_checkpoint_small.pth"))
    assert set(ckpt) >= {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    args = ckpt["args"]
    assert isinstance(args, dict) and args["backbone"] == "resnet18"
    model = build_detr(DETRConfig(**golden["config"]["overrides"]))[0]
    assert load_model_weights(model, ckpt["model"]) == []
    assert len(ckpt["optimizer"]["param_groups"]) == 2


def test_bare_state_dict_round_trip(tmp_path):
    model = build_detr(TINY)[0]
    save_checkpoint(model.state_dict(), tmp_path / "weights.pth")
    ckpt = load_checkpoint(tmp_path / "weights.pth")
    other = build_detr(TINY)[0]
    load_model_weights(other, ckpt["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_ddp_prefix_is_stripped(tmp_path):
    model = build_detr(TINY)[0]
    load_model_weights(build_detr(TINY)[0], {f"module.{k}": v for k, v in model.state_dict().items()})


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": {}, "epoch": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": {}, "epoch": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # no temporary file left behind


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "hook": argparse.ArgumentParser}, path)
    with pytest.raises(CheckpointError, match="never unpickles arbitrary code"):
        load_checkpoint(path)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_offline_url_gives_a_clear_error():
    with pytest.raises(CheckpointError, match="local path"):
        load_checkpoint("https://localhost.invalid/detr-r50-e632da11.pth")


def test_checkpoint_from_another_architecture_names_keys_and_suggests_finetune():
    source = build_detr(TINY)[0].state_dict()
    model = build_detr(DETRConfig(**{**TINY.__dict__, "num_classes": 7}))[0]
    with pytest.raises(CheckpointError, match=r"class_embed.weight: checkpoint \(5, 32\) vs model \(8, 32\).*--finetune_from"):
        load_model_weights(model, source)
    dropped = load_model_weights(model, source, finetune=True)
    assert dropped == ["class_embed.weight", "class_embed.bias"]
    assert torch.equal(model.state_dict()["query_embed.weight"], source["query_embed.weight"])


