"""What the notebooks share: no notebook defines anything a later one needs, so it lives here.

- `course_detector`: the trained shapes detector the inference and fine-tuning notebooks start
  from (make train's checkpoint, else the training notebook's, else a short training now);
- `published_recipe`: DETR as published (no successor option) at the size the shapes recipe has;
- `comparison_recipe`: the configuration the side-by-side training comparisons use (the
  successors' fixes, the paper's ablations), and the runs they compare (`SUCCESSOR_FIXES`);
- `save_run` and `stored_run`: a training notebook's long run, stored as data in
  notebooks/results/ with the command that made it, so that the notebook can draw it beside the
  learner's own (short) default run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from detr_full.config import TrainConfig, shapes_cpu_recipe

# The shapes detectors the course trains, best first (paths from the repository root): `make train`'s
# and the recipe notebook's (a short run). The inference and fine-tuning notebooks start from the first
# that exists.
COURSE_CHECKPOINTS = ("outputs/shapes/checkpoint.pth", "outputs/10_learning_in_minutes/checkpoint.pth")


def find_course_checkpoint(repo: Union[str, Path]) -> Optional[Path]:
    """The first of COURSE_CHECKPOINTS that exists under `repo`, or None when the course trained none yet."""
    return next((Path(repo) / p for p in COURSE_CHECKPOINTS if (Path(repo) / p).is_file()), None)


def course_detector(choice: str, repo: Path, output_dir: Path, device: str = "auto", seed: int = 42) -> Path | str:
    """The trained shapes detector a notebook starts from. `choice`: "auto" = the first of
    COURSE_CHECKPOINTS that exists, else as "train"; "train" = 3 epochs of make train's recipe
    (`shapes_imagenet`), the lr / 10 for the last, written to `output_dir` by `python -m detr_full.train`
    (a few minutes); anything else is a checkpoint path or URL, returned as it is."""
    if choice == "auto":
        found = find_course_checkpoint(repo)
        if found is not None:
            return found
        choice = "train"
    if choice != "train":
        return choice
    print("no trained shapes detector in this checkout: training 3 epochs of make train's recipe first", flush=True)
    train_briefly(["--recipe", "shapes_imagenet", "--epochs", "3", "--lr_drop", "2", "--device", str(device),
                   "--seed", str(seed), "--output_dir", str(output_dir)])
    return Path(output_dir) / "checkpoint.pth"


def train_briefly(argv: list[str]) -> None:
    """Run `python -m detr_full.train ARGV` in a child process, echoing its one-line epoch summaries (not
    the COCO tables or progress bars); a failure raises RuntimeError with the end of its error output."""
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen([sys.executable, "-m", "detr_full.train", *argv], stdout=subprocess.PIPE,
                                 stderr=errors, text=True)
        for line in child.stdout:
            if line.startswith(("Epoch ", "Pretrained", "Training time")):
                print(line.rstrip(), flush=True)
        if child.wait() != 0:
            errors.seek(0)
            raise RuntimeError(f"python -m detr_full.train {' '.join(argv)} failed:\n{errors.read()[-2000:]}")


def published_recipe(**overrides: Any) -> TrainConfig:
    """The shapes recipe's sizes with every successor option off: DETR as the paper publishes it (its
    model, matcher and loss), at a size a CPU trains in minutes. `overrides` change any field."""
    return shapes_cpu_recipe(**{**dict(spatial_prior=False, query_selection=False, selection_nms=0.0,
                                       anchor_queries=False, fine_memory=False), **overrides})


# make train's recipe as it was when the side-by-side comparisons were designed, as overrides of
# today's: the backbone's layer2-3 trained, the decoder's first boxes learned (no query selection, no
# anchor queries), one level of memory: each successor's fix is compared on the plainest model
# that learns within the comparison's few hundred steps.
COMPARISON_RECIPE: dict[str, Any] = dict(lr_backbone=1e-4, backbone_in_loader=False, query_selection=False,
                                         selection_nms=0.0, anchor_queries=False, fine_memory=False)

# The runs the successors' comparison puts side by side: overrides of comparison_recipe(). "DETR" is
# the recipe without its spatial prior; anchor queries, the conditional spatial query and denoising
# build on the prior's reference boxes, so they are compared with "spatial prior"; query groups and
# denoising exclude each other (config.check_config), so "all" has no groups.
SUCCESSOR_FIXES: dict[str, dict] = {
    "DETR": dict(spatial_prior=False),
    "query groups (Group DETR)": dict(spatial_prior=False, num_query_groups=5),
    "focal loss (Deformable DETR)": dict(spatial_prior=False, focal_loss=True),
    "spatial prior (SMCA)": dict(spatial_prior=True),
    "+ conditional spatial query (Cond. DETR)": dict(spatial_prior=True, conditional=True),
    "+ anchor queries (DAB-DETR)": dict(spatial_prior=True, anchor_queries=True),
    "+ denoising (DN-DETR)": dict(spatial_prior=True, dn_groups=5),
    "all but groups": dict(spatial_prior=True, anchor_queries=True, dn_groups=5, focal_loss=True),
}


def comparison_recipe(backbone: Union[str, Path], coco_path: Union[str, Path], seed: int = 42,
                      warmup_steps: int = 50, device: str = "cpu", **options: Any) -> TrainConfig:
    """The shapes recipe with COMPARISON_RECIPE and `options` on top, for a learning_curve run: the
    pretrained `backbone` (a path, or "pretrain"), data from `coco_path`, no loader workers (the CPU
    minutes are then this process's), the given seed, warm-up and device."""
    return shapes_cpu_recipe(**{**COMPARISON_RECIPE, **options}, seed=seed, warmup_steps=warmup_steps,
                             num_workers=0, device=device, pretrained_backbone=str(backbone), coco_path=str(coco_path))


RESULTS = Path(__file__).resolve().parents[1] / "notebooks" / "results"   # the stored long runs


def save_run(name: str, notebook: str, parameters: dict[str, Any], results: Any) -> Path:
    """Store a notebook run's `results` (JSON-able) as notebooks/results/<name>.json, with the
    papermill command that makes them again: `notebook` run with `parameters` (every one of them).
    A value JSON has no type for (a torch.device a notebook resolved, a Path) is stored as its text,
    as the command spells it."""
    args = " ".join(f"-p {k} {shlex.quote(str(v))}" for k, v in parameters.items())
    command = f"papermill notebooks/{notebook} /tmp/{name}.ipynb -k python3 --cwd notebooks {args}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    stored = json.dumps({"command": command, "parameters": parameters, "results": results}, indent=1, default=str)
    path.write_text(stored + "\n")       # made in full first: a value that fails leaves no half-written file
    return path


def stored_run(name: str) -> Optional[dict]:
    """A stored run ({"command", "parameters", "results"}; see save_run), or None when there is none."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
