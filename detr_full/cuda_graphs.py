"""The official model's forward and backward replayed as CUDA graphs (`--cuda_graphs`).

A training step of the paper's model launches a few thousand kernels (benchmarks/step_anatomy.py),
each a few microseconds of host work; on a fast GPU the host cannot keep up and the device waits.
A CUDA graph records the kernels of one forward and one backward once and replays them with a single
launch each. A graph is fixed to the shapes it was recorded with, so `GraphedDETR` keeps one graph
per batch shape: a shape seen for the first time runs eagerly, the second time it is recorded
(`torch.cuda.make_graphed_callables`), and from then on replayed. Padding every batch to a multiple
(`TrainConfig.pad_to`, e.g. 128 for COCO's 800-1333-px images) makes the shapes few.

What stays outside the graphs: the matching (scipy, on the host) and the loss, between forward and
backward, and the optimizer. The successors' options are not supported (denoising queries and query
selection change their shapes from batch to batch): `config.check_config` refuses them. Evaluation
runs eagerly. Autocast must not cache its casts while a graph is recorded: `uses_graphs` tells the
engine so.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from detr_full.detr import DETR, checked_padding_mask


class _Decode(nn.Module):
    """DETR.decode as a module (make_graphed_callables takes the gradients of a module's parameters)."""

    def __init__(self, model: DETR):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.decode(images, padding_mask)


class GraphedDETR(nn.Module):
    """DETR whose training forward and backward replay as CUDA graphs, one per batch shape."""

    uses_graphs = True

    def __init__(self, model: DETR, capture: Optional[Callable] = None):
        """capture(module, sample_args) -> the graphed module: torch.cuda.make_graphed_callables (a CPU twin
        in the tests)."""
        super().__init__()
        self.decoder = _Decode(model)                 # holds the model (its state_dict: decoder.model.*)
        self.capture = capture or torch.cuda.make_graphed_callables
        self.graphs: dict[tuple, Callable] = {}
        self.seen: set[tuple] = set()

    @property
    def model(self) -> DETR:
        return self.decoder.model

    def forward(self, images: Tensor, padding_mask: Optional[Tensor] = None) -> dict:
        padding_mask = checked_padding_mask(images, padding_mask)
        if not self.training:
            return self.model(images, padding_mask)
        key = (tuple(images.shape), images.dtype, torch.is_autocast_enabled())
        if key not in self.graphs:
            if key not in self.seen:                   # a new shape: eagerly, once
                self.seen.add(key)
                return self.model(images, padding_mask)
            self.graphs[key] = self.capture(self.decoder, (images, padding_mask))
        return self.model.readouts(*self.graphs[key](images, padding_mask))
