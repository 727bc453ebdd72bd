"""Static matplotlib drawings: training curves from `log.txt` and detections on an image.

Differences from the official `util/plot_utils.py`:
- `plot_logs` reads the JSON lines with the standard library (the official version needs pandas
  and breaks on pandas 3 when it interpolates the list-valued `test_coco_eval_bbox` column).
- No exponential smoothing (the official default `ewm_col=0` does none either).
- It builds a `matplotlib.figure.Figure` directly, without pyplot, so it works headless, does not
  leak figures in long runs, and shows once in a notebook (display the returned figure).
- `plot_precision_recall` is not provided.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

# The 12 numbers of `test_coco_eval_bbox`, in COCOeval.summarize() order. The official plot_logs'
# "mAP" is column 1, i.e. AP at IoU 0.5.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def read_log(path: Union[str, Path]) -> list[dict]:
    """Entries of a `log.txt` (one JSON object per line); `path` is the file or its directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.txt"
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            entries.append(json.loads(line))
    return entries


def plot_logs(log_dirs: Union[str, Path, Sequence[Union[str, Path]]],
              fields: Sequence[str] = ("class_error", "loss_bbox_unscaled", "mAP"),
              out: Optional[Union[str, Path]] = None) -> Figure:
    """One panel per field: `train_{field}` solid, `test_{field}` dashed, one colour per run.

    `log_dirs` are output directories (or `log.txt` paths). Fields are log keys without the
    `train_`/`test_` prefix, or a COCO stat name from `COCO_STAT_NAMES` ("AP", "AP50", ...) read
    from `test_coco_eval_bbox`; "mAP" is AP50, as in the official plot. Saves to `out` when given.
    """
    if isinstance(log_dirs, (str, Path)):
        log_dirs = [log_dirs]
    runs = [(Path(d), read_log(d)) for d in log_dirs]
    fig = Figure(figsize=(5 * len(fields), 4), layout="constrained")
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, field in zip(axes, fields):
        for (run_dir, entries), color in zip(runs, colors):
            name = run_dir.name if run_dir.name != "log.txt" else run_dir.parent.name
            epochs = [e.get("epoch", i) for i, e in enumerate(entries)]
            if field == "mAP" or field in COCO_STAT_NAMES:
                column = COCO_STAT_NAMES.index("AP50" if field == "mAP" else field)
                ys = [e["test_coco_eval_bbox"][column] if e.get("test_coco_eval_bbox") else np.nan for e in entries]
                ax.plot(epochs, ys, "--", color=color, marker=".", label=f"{name} test")
                continue
            for split, style in (("train", "-"), ("test", "--")):
                key = f"{split}_{field}"
                if any(key in e for e in entries):
                    ys = [e.get(key, np.nan) for e in entries]
                    ax.plot(epochs, ys, style, color=color, marker=".", label=f"{name} {split}")
        ax.set_title("mAP (AP50)" if field == "mAP" else field)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if out is not None:
        fig.savefig(out, dpi=100)
    return fig


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _image_array(image: Any) -> np.ndarray:
    """PIL image, (H, W, 3) array or (3, H, W) tensor in [0, 1] -> (H, W, 3) array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)  # (H, W, C)
        return image.clamp(0, 1).numpy()
    return np.asarray(image)


def draw_boxes(ax: Axes, image: Any, boxes_xyxy: Any, labels: Any = None, scores: Any = None,
               names: Optional[Union[Mapping[int, str], Sequence[str]]] = None,
               color: Optional[str] = None) -> None:
    """Show `image` on `ax` with boxes (N, 4) as absolute xyxy pixels, captioned "name score".

    `image`: a PIL image, an (H, W, 3) array or a (3, H, W) tensor in [0, 1] (not normalised).
    `labels` (N,) are category ids, looked up in `names` (a dict id -> name, or a list indexed by
    id); unknown ids are shown as numbers. Tensors, arrays or lists. One colour per category
    unless `color` is given.
    """
    ax.imshow(_image_array(image))
    boxes = _numpy(boxes_xyxy).astype(float).reshape(-1, 4)
    labels = [None] * len(boxes) if labels is None else [int(x) for x in _numpy(labels).reshape(-1)]
    scores = [None] * len(boxes) if scores is None else [float(x) for x in _numpy(scores).reshape(-1)]
    for (x0, y0, x1, y1), label, score in zip(boxes, labels, scores):
        c = color or (f"C{label % 10}" if label is not None else "C0")
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=2))
        caption = ([] if label is None else [_name(names, label)]) + ([] if score is None else [f"{score:.2f}"])
        if caption:
            ax.text(x0, y0, " ".join(caption), fontsize=8, color="white", va="bottom",
                    bbox=dict(facecolor=c, alpha=0.7, pad=1, edgecolor="none"))
    ax.set_axis_off()


def _name(names: Any, label: int) -> str:
    if names is None:
        return str(label)
    if isinstance(names, Mapping):
        return str(names.get(label, label))
    if 0 <= label < len(names) and names[label] not in (None, "", "N/A"):
        return str(names[label])
    return str(label)
