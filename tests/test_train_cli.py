"""train.py: the CLI end to end, --eval --resume, exact resume, --finetune_from, clear errors.

A tiny DETR (resnet18, hidden 32, 1+1 layers, 5 queries) on 8 + 4 synthetic shapes images at 64 px.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detr_full.build import build_detr
from detr_full.checkpoint import save_checkpoint
from detr_full.config import DETRConfig, TrainConfig
from detr_full.data.shapes import make_shapes
from detr_full.train import cli, main, parse_args
from detr_full.viz import plot_logs, read_log

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="resnet18", hidden_dim=32, enc_layers=1, dec_layers=1, dim_feedforward=64, nheads=2,
            num_queries=5, batch_size=2, epochs=1, lr_backbone=0.0, scales="64", max_size=96, val_size=64,
            num_workers=0, device="cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4)


def tiny_argv(coco_path, **extra) -> list[str]:
    """CLI flags for the tiny config (+ `extra`); booleans become bare flags."""
    argv = ["--coco_path", str(coco_path)]
    for k, v in {**TINY, **extra}.items():
        if v is True:
            argv.append(f"--{k}")
        elif v is not False:
            argv += [f"--{k}", str(v)]
    return argv


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """`python -m detr_full.train ...` for one epoch, in a subprocess, as a user runs it."""
    out = tmp_path_factory.mktemp("run") / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "detr_full.train", *tiny_argv(shapes, output_dir=out)],
                          cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_cli_one_epoch_end_to_end(trained):
    out, proc = trained
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout
    for name in ("checkpoint.pth", "log.txt", "plots.png", "eval/latest.pth", "eval/000.pth"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)  # plain types only: safe to load
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args", "rng", "warmup", "categories"} <= set(ckpt)
    assert ckpt["epoch"] == 0
    assert ckpt["args"]["num_classes"] == 19      # derived: shapes' largest category id is 18
    assert ckpt["args"]["backbone"] == "resnet18" and ckpt["args"]["num_queries"] == 5
    assert ckpt["categories"][1] == "circle"
    assert ckpt["lr_scheduler"]["step_size"] == 200 and ckpt["lr_scheduler"]["base_lrs"] == [1e-4, 0.0]
    assert len(ckpt["optimizer"]["param_groups"]) == 2
    [entry] = read_log(out)
    assert entry["epoch"] == 0 and len(entry["test_coco_eval_bbox"]) == 12


def test_eval_resume_reevaluates(trained, shapes, tmp_path):
    """--eval --resume on the checkpoint gives the numbers the training run logged after that epoch."""
    out, _ = trained
    [entry] = read_log(out)
    stats = main(TrainConfig(**TINY, coco_path=str(shapes), eval=True, resume=str(out / "checkpoint.pth"),
                             output_dir=str(tmp_path)))
    assert stats["test_coco_eval_bbox"] == pytest.approx(entry["test_coco_eval_bbox"], abs=1e-9)
    assert stats["test_loss"] == pytest.approx(entry["test_loss"], rel=1e-5)
    record = torch.load(tmp_path / "eval.pth", weights_only=True)   # COCOeval.eval, safely loadable
    assert record["precision"].shape[0] == 10 and len(record["stats"]) == 12
    assert not (tmp_path / "checkpoint.pth").exists()  # --eval writes no checkpoint


@pytest.mark.parametrize("options", [{}, {"num_query_groups": 2, "aspect_ratio_grouping": True},
                                     {"spatial_prior": True, "dn_groups": 2},
                                     {"spatial_prior": True, "anchor_queries": True, "focal_loss": True},
                                     {"ema_decay": 0.9}],
                         ids=["official", "query_groups+aspect_grouping", "denoising", "anchor_queries+focal", "ema"])
def test_resume_is_bit_exact(shapes, tmp_path, options):
    """2 epochs in one go == 1 epoch, stop, resume for the 2nd: same weights, optimizer and log."""
    settings = dict(TINY, coco_path=str(shapes), lr_backbone=1e-5, lr_drop=1, warmup_steps=3, dropout=0.1, **options)
    main(TrainConfig(**{**settings, "epochs": 2, "output_dir": str(tmp_path / "a")}))
    main(TrainConfig(**{**settings, "epochs": 1, "output_dir": str(tmp_path / "b")}))
    resumed = main(TrainConfig(**{**settings, "epochs": 2, "output_dir": str(tmp_path / "b"),
                                  "resume": str(tmp_path / "b" / "checkpoint.pth")}))
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert a.keys() == b.keys() and a["model"].keys() == b["model"].keys()
    for weights in ("model", "raw_model") if "raw_model" in a else ("model",):   # with EMA: the average, the trained
        for k in a[weights]:
            assert torch.equal(a[weights][k], b[weights][k]), (weights, k)
    assert a.get("ema_updates") == b.get("ema_updates")
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["warmup"] == b["warmup"]
    assert read_log(tmp_path / "a") == read_log(tmp_path / "b")
    assert resumed["epoch"] == 1


def test_with_ema_the_checkpoint_holds_the_average_that_was_evaluated(shapes, tmp_path):
    """`model` is the average (what the log's AP is of, and what --eval reproduces), `raw_model` the
    optimizer's weights; they differ after training."""
    settings = dict(TINY, coco_path=str(shapes), lr_backbone=1e-5, ema_decay=0.9)
    main(TrainConfig(**settings, output_dir=str(tmp_path / "run")))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ckpt["ema_updates"] == 4                       # 8 images, batch 2, one epoch
    assert not torch.equal(ckpt["model"]["class_embed.weight"], ckpt["raw_model"]["class_embed.weight"])
    [entry] = read_log(tmp_path / "run")
    stats = main(TrainConfig(**settings, eval=True, resume=str(tmp_path / "run" / "checkpoint.pth")))
    assert stats["test_coco_eval_bbox"] == pytest.approx(entry["test_coco_eval_bbox"], abs=1e-9)
    assert stats["test_loss"] == pytest.approx(entry["test_loss"], rel=1e-5)


def test_backbone_in_loader_trains_the_same_model(shapes, tmp_path):
    """The workers' ResNet gives the features the model's own would: same weights and log after an epoch."""
    settings = dict(TINY, coco_path=str(shapes), num_workers=1, epochs=1)
    for name, ahead in (("model", False), ("loader", True)):
        main(TrainConfig(**settings, backbone_in_loader=ahead, output_dir=str(tmp_path / name)))
    a = torch.load(tmp_path / "model" / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "loader" / "checkpoint.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(tmp_path / "model") == read_log(tmp_path / "loader")


def test_finetune_from_other_num_classes(trained, shapes, capsys):
    out, _ = trained
    rc = cli(tiny_argv(shapes, num_classes=25, num_queries=7, epochs=0,
                       finetune_from=out / "checkpoint.pth"))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "num_classes 25" in printed
    dropped = printed.split("dropped", 1)[1].splitlines()[0]
    assert {"class_embed.weight", "class_embed.bias", "query_embed.weight"} <= set(
        dropped.split(":", 1)[1].replace(",", " ").split())
    assert "bbox_embed" not in dropped


def test_bad_checkpoint_gives_clear_error(shapes, tmp_path, capsys):
    other, _, _ = build_detr(DETRConfig(backbone="resnet18", hidden_dim=64, enc_layers=1, dec_layers=1,
                                        dim_feedforward=64, nheads=2, num_queries=5, num_classes=19))
    save_checkpoint({"model": other.state_dict()}, tmp_path / "other.pth")
    rc = cli(tiny_argv(shapes, eval=True, resume=tmp_path / "other.pth"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "do not fit this model" in err and "with other shapes" in err and "Traceback" not in err

    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    assert cli(tiny_argv(shapes, eval=True, resume=tmp_path / "broken.pth")) == 2
    assert cli(tiny_argv(shapes, eval=True, resume=tmp_path / "missing.pth")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_input_exits_2(shapes, tmp_path, capsys):
    assert cli(tiny_argv(shapes, masks=True)) == 2
    assert "--masks" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, dataset_file="coco_panoptic", frozen_weights="x.pth")) == 2
    assert "not supported in detr-course" in capsys.readouterr().err
    assert cli(tiny_argv(tmp_path / "nowhere")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, num_classes=5)) == 2   # shapes uses category ids up to 18
    assert "at least 19" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, num_query_groups=0)) == 2
    assert "num_query_groups must be >= 1 (1 = plain DETR); got 0" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, dn_groups=2)) == 2                 # denoising needs the spatial prior
    assert "dn_groups=2 decodes noised ground-truth boxes as reference boxes of the spatial prior, but " \
           "spatial_prior=False: turn on spatial_prior (--spatial_prior)" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, anchor_queries=True)) == 2
    assert "anchor_queries=True makes the query positions" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, focal_loss=True, focal_alpha=1.5)) == 2
    assert "focal_alpha is the positives' weight in the focal loss, in (0, 1); got 1.5" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, pretrained_backbone="pretrain", pretrain_task="segmentation")) == 2
    assert "pretrain_task must be one of objects, multilabel; got 'segmentation'" in capsys.readouterr().err
    assert cli(tiny_argv(shapes, backbone_in_loader=True, lr_backbone=1e-5)) == 2   # the ResNet must be frozen
    assert "must be frozen: set lr_backbone 0 (--lr_backbone 0; got 1e-05)" in capsys.readouterr().err


def test_num_classes_given_is_detected():
    assert parse_args(["--num_classes", "7"]) == (TrainConfig(num_classes=7), True)
    assert parse_args(["--num_classes=7"])[1]
    assert parse_args(["--epochs", "3"]) == (TrainConfig(epochs=3), False)
    with pytest.raises(SystemExit):
        parse_args(["--num_class", "7"])  # no abbreviations, so the detection above is exact


def test_recipe_sets_defaults_that_flags_still_override():
    from detr_full.config import shapes_cpu_recipe
    from detr_full.train import parse_args

    cfg, _ = parse_args(["--recipe", "shapes_cpu", "--epochs", "3", "--no_pre_norm"])
    assert cfg == shapes_cpu_recipe(epochs=3, pre_norm=False)
    cfg, _ = parse_args(["--pre_norm", "--no_aux_loss", "--dilation"])  # the official store_true flags
    assert cfg.pre_norm and cfg.dilation and not cfg.aux_loss and cfg.lr == 1e-4


def test_shapes_imagenet_recipe_is_the_shapes_recipe_with_another_backbone_and_schedule():
    from detr_full.config import shapes_cpu_recipe
    from detr_full.train import parse_args

    cfg, _ = parse_args(["--recipe", "shapes_imagenet"])
    base = shapes_cpu_recipe()
    differ = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}
    assert differ == {"backbone", "pretrained_backbone", "epochs", "lr_drop"}   # the same DETR otherwise
    assert (cfg.backbone, cfg.pretrained_backbone) == ("mobilenet_v2", "imagenet")
    assert cfg.lr_drop < cfg.epochs < base.epochs                             # a drop inside a shorter run


def test_pretrained_backbone_pretrain_makes_and_loads_the_weights(shapes, tmp_path, monkeypatch, capsys):
    from detr_full import pretrain
    monkeypatch.setattr(pretrain, "DEFAULT_CACHE", tmp_path / "cache")
    settings = dict(TINY, coco_path=str(shapes), pretrained_backbone="pretrain", pretrain_steps=2,
                    output_dir=str(tmp_path / "run"))                 # lr_backbone 0: the backbone stays as loaded
    main(TrainConfig(**settings))
    assert "Pretraining the resnet18 backbone" in capsys.readouterr().out
    (weights_file,) = (tmp_path / "cache").glob("*.pth")                 # beside it: the lock file
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["pretrained_backbone"] == str(weights_file)   # the run records which file it used
    weights = torch.load(weights_file, weights_only=True)["model"]
    assert torch.equal(ckpt["model"]["backbone.0.body.layer4.1.conv2.weight"], weights["layer4.1.conv2.weight"])
    # resumed (or fine-tuned) runs take the backbone from their checkpoint: nothing is pretrained again
    monkeypatch.setattr(pretrain, "pretrain", lambda *a, **k: pytest.fail("must not pretrain"))
    weights_file.unlink()
    main(TrainConfig(**{**settings, "epochs": 2, "resume": str(tmp_path / "run" / "checkpoint.pth")}))


def test_diagnostics_are_logged_and_change_nothing(shapes, tmp_path):
    settings = dict(TINY, coco_path=str(shapes), epochs=2, lr_backbone=1e-5)
    main(TrainConfig(**settings, diagnostics=True, output_dir=str(tmp_path / "on")))
    main(TrainConfig(**settings, output_dir=str(tmp_path / "off")))
    on, off = read_log(tmp_path / "on"), read_log(tmp_path / "off")
    assert "test_matching_instability" not in on[0]                  # the first evaluation has no previous one
    assert 0 <= on[1]["test_matching_instability"] <= 100
    assert all(0 <= e["test_box_spread"] <= 1 for e in on)
    assert not any(k.endswith(("matching_instability", "box_spread")) for e in off for k in e)
    a = torch.load(tmp_path / "on" / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "off" / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)                  # measuring does not change the run
    fig = plot_logs(tmp_path / "on", fields=("matching_instability", "box_spread"))
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]              # the test_ curve of each


def test_the_run_progress_line_counts_the_whole_run_and_estimates_the_rest():
    from detr_full.train import run_progress
    assert run_progress(125, [60.0, 40.0], 2, 12) == "Run: epoch 2/12 done, 0:02:05 elapsed, about 0:08:20 left"
    assert run_progress(700, [50.0] * 12, 12, 12) == "Run: epoch 12/12 done, 0:11:40 elapsed, finished"
