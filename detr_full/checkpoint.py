"""Reading and writing checkpoints safely.

Reading never unpickles arbitrary code: `torch.load(weights_only=True)` with one extra allowed
type, `argparse.Namespace`, which the official `main.py` stores under `args`. Writing is atomic
(temporary file + rename), so a kill mid-write never leaves a broken checkpoint behind.

Official checkpoint dict: `model` (state_dict), `optimizer`, `lr_scheduler`, `epoch`, `args`.
The published weights (`detr-r50-e632da11.pth`, ...) carry `model` only.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import urllib.error
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

OFFICIAL_URLS = {
    "detr_resnet50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr_resnet50_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr_resnet101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr_resnet101_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
    "detr_demo": "https://dl.fbaipublicfiles.com/detr/detr_demo-da2a99e9.pth",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


def _torch_load(source: Union[str, Path], map_location: Any) -> Any:
    source = str(source)
    with torch.serialization.safe_globals([argparse.Namespace]):
        if source.startswith(("http://", "https://")):
            try:
                return torch.hub.load_state_dict_from_url(source, map_location=map_location,
                                                          weights_only=True, check_hash=True)
            except (urllib.error.URLError, OSError) as e:
                raise CheckpointError(
                    f"Could not download {source} ({e}). This machine may be offline: download the file "
                    "elsewhere and pass its local path instead.") from None
        if not Path(source).is_file():
            raise CheckpointError(f"Checkpoint {source} does not exist. Pass the path of a .pth file or an "
                                  "http(s) URL.")
        return torch.load(source, map_location=map_location, weights_only=True)


def load_checkpoint(source: Union[str, Path], map_location: Any = "cpu") -> dict:
    """Read a checkpoint from a local path or an http(s) URL.

    Accepts a bare state_dict or a dict with a `model` entry (the official training checkpoint).
    Returns a dict that always has `model`; an `args` argparse.Namespace becomes a plain dict.
    """
    try:
        obj = _torch_load(source, map_location)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{source} holds Python objects that are not plain tensors and containers, so it was not "
            f"loaded (detr-course never unpickles arbitrary code). torch said: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{source} is not a readable PyTorch checkpoint (truncated or another format): "
                              f"{str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state_dict or checkpoint dict.")
    if "model" not in obj:
        if not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(f"{source} has no 'model' entry and is not a bare state_dict "
                                  f"(keys: {', '.join(list(obj)[:8])}).")
        obj = {"model": obj}
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = vars(obj["args"])
    return obj


def save_checkpoint(obj: dict, path: Union[str, Path]) -> None:
    """torch.save to `path` atomically: write a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the checkpoint private to this user
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _strip_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints saved from a DistributedDataParallel wrapper prefix every key with `module.`."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def load_model_weights(model: nn.Module, state_dict: dict[str, Tensor], finetune: bool = False,
                       source: str = "checkpoint") -> list[str]:
    """Load `state_dict` into `model`, all keys and shapes matching (strict).

    With `finetune=True`, entries whose shape differs (e.g. `class_embed` for another num_classes,
    `query_embed` for another num_queries) and keys the model lacks are dropped and keep their fresh
    initialisation. Returns the dropped keys. A mismatch without `finetune` raises a CheckpointError
    that names the keys.
    """
    state_dict = _strip_prefix(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if finetune:
        dropped = unexpected + [k for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
        model.load_state_dict({k: v for k, v in state_dict.items() if k not in dropped}, strict=False)
        return dropped + [k for k in missing if k not in dropped]
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        parts = [f"{len(mismatched)} with other shapes: {show(mismatched)}" if mismatched else "",
                 f"{len(missing)} missing from the checkpoint: {show(missing)}" if missing else "",
                 f"{len(unexpected)} the model does not have: {show(unexpected)}" if unexpected else ""]
        raise CheckpointError(
            f"The weights in {source} do not fit this model ({'; '.join(p for p in parts if p)}). "
            "The checkpoint was made for another architecture (backbone, hidden_dim, layers, num_queries "
            "or num_classes): build the model with the checkpoint's settings, or start from it with "
            "--finetune_from to keep only the weights that fit.")
    model.load_state_dict(state_dict)
    return []
