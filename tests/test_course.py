"""course.py: the detector the notebooks start from, and the comparison recipe."""

import pytest
import torch

from detr_full.build import build_detr
from detr_full.checkpoint import save_checkpoint
from detr_full.config import model_config
from detr_full.course import (COMPARISON_RECIPE, COURSE_CHECKPOINTS, SUCCESSOR_FIXES, comparison_recipe,
                              course_detector, find_course_checkpoint, published_recipe, save_run, stored_run,
                              train_briefly)


def test_course_checkpoint_prefers_make_train_over_the_recipe_notebooks(tmp_path):
    assert find_course_checkpoint(tmp_path) is None                          # nothing trained yet
    notebook_10, make_train = (tmp_path / p for p in reversed(COURSE_CHECKPOINTS))
    save_checkpoint({"model": {}}, notebook_10)
    assert find_course_checkpoint(tmp_path) == notebook_10
    save_checkpoint({"model": {}}, make_train)
    assert find_course_checkpoint(tmp_path) == make_train
    make_train.unlink()
    make_train.mkdir()                                                       # a folder by that name is no checkpoint
    assert find_course_checkpoint(tmp_path) == notebook_10


def test_course_detector_finds_make_trains_then_the_recipe_notebooks_then_trains_one(tmp_path, monkeypatch):
    import detr_full.course as course

    trained = []
    monkeypatch.setattr(course, "train_briefly", lambda argv: trained.append(argv))
    out = tmp_path / "nb"
    assert course_detector("auto", tmp_path, out, "cpu", 3) == out / "checkpoint.pth"       # nothing yet: trains
    assert trained == [["--recipe", "shapes_imagenet", "--epochs", "3", "--lr_drop", "2", "--device", "cpu",
                        "--seed", "3", "--output_dir", str(out)]]
    for path in ("outputs/10_learning_in_minutes/checkpoint.pth", "outputs/shapes/checkpoint.pth"):
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_bytes(b"")
        assert course_detector("auto", tmp_path, out) == tmp_path / path                     # make train's first
    assert course_detector("my.pth", tmp_path, out) == "my.pth" and len(trained) == 1


def test_train_briefly_runs_the_cli_and_reports_its_failure():
    with pytest.raises(RuntimeError, match="--masks .* not supported"):
        train_briefly(["--masks", "--epochs", "1"])


def test_comparison_recipe_is_the_recipe_with_the_comparison_overrides_and_options(tmp_path):
    cfg = comparison_recipe(tmp_path / "backbone.pth", tmp_path / "data", seed=3, warmup_steps=7, device="cpu",
                            dn_groups=5)
    assert cfg.pretrained_backbone == str(tmp_path / "backbone.pth") and cfg.coco_path == str(tmp_path / "data")
    assert (cfg.seed, cfg.warmup_steps, cfg.num_workers, cfg.dn_groups) == (3, 7, 0, 5)
    assert all(getattr(cfg, k) == v for k, v in COMPARISON_RECIPE.items())
    assert cfg.spatial_prior and cfg.backbone == "resnet18"              # the rest is the shapes recipe


def test_every_named_run_builds():
    for name, options in SUCCESSOR_FIXES.items():
        cfg = comparison_recipe("", "data", **options)
        model = build_detr(model_config(cfg))[0]
        assert model.eval()(torch.zeros(1, 3, 64, 64))["pred_boxes"].shape == (1, 10, 4), name   # inference: 10


def test_published_recipe_is_detr_as_published_at_the_recipes_size():
    cfg = published_recipe(num_classes=19, pretrained_backbone="", lr=1e-3)
    model, criterion, _ = build_detr(model_config(cfg))
    assert type(model).__name__ == "DETR" and type(criterion).__name__ == "SetCriterion"   # no successor option
    assert (cfg.hidden_dim, cfg.num_queries, cfg.lr) == (128, 10, 1e-3)


def test_a_stored_run_keeps_its_command_and_the_values_a_notebook_resolved(tmp_path, monkeypatch):
    monkeypatch.setattr("detr_full.course.RESULTS", tmp_path)
    parameters = {"steps": 400, "device": torch.device("cpu"), "coco_path": None, "save_as": "run"}
    path = save_run("run", "07_auxiliary_decoding_losses.ipynb", parameters, {"AP50": [0.1, 0.2]})
    stored = stored_run("run")
    assert path == tmp_path / "run.json"
    assert stored["command"] == ("papermill notebooks/07_auxiliary_decoding_losses.ipynb /tmp/run.ipynb -k python3 "
                                 "--cwd notebooks -p steps 400 -p device cpu -p coco_path None -p save_as run")
    assert stored["parameters"]["device"] == "cpu" and stored["results"] == {"AP50": [0.1, 0.2]}
    assert stored_run("another") is None
