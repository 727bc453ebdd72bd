"""Weight EMA: evaluate and keep an exponential moving average of the weights, not the last step's.

Not in DETR; later real-time detectors of its family keep one (RT-DETR: decay 0.9999). The averaged
weights are a smoother model than any single step's, which on a short schedule with a noisy
matching may be worth more than the last few steps (measured, not assumed: benchmarks/README.md).
Off by default (`TrainConfig.ema_decay = 0`: the official model and training, untouched).

After every optimizer step each trainable weight moves toward the model's by a factor 1 - d:

    ema <- d * ema + (1 - d) * weight,        d = min(decay, (1 + n) / (10 + n))

where n counts the updates (1 for the first): early on, d is small and the average follows the model
closely (an average over the random init would be useless); from about 9 / (1 - decay) updates on
(9,000 for 0.999) it is `decay`; before that the average spans about the last n / 9 updates.
Frozen weights and buffers (the frozen BatchNorm's statistics) are copied, not averaged.

In a checkpoint of a run with EMA, `model` holds the averaged weights (what the log's AP belongs to,
what `--eval`, `predict` and fine-tuning load) and `raw_model` the optimizer's own, which a resumed
run trains on; `ema_updates` is n.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """A moving average of `model`'s weights, in `self.module` (a copy of `model`, in eval mode).

    Holds references to `model`'s own tensors: call `update()` after each optimizer step (the
    optimizer changes them in place), with no argument."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), e.g. 0.999; got {decay}.")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.module.parameters(), model.parameters()))
        self._averaged = [(e, p) for e, p in pairs if p.requires_grad]
        self._copied = [(e, p) for e, p in pairs if not p.requires_grad]
        self._copied += list(zip(self.module.buffers(), model.buffers()))

    def current_decay(self) -> float:
        """d for the next update."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        if self._averaged:
            ema, weights = zip(*self._averaged)
            torch._foreach_lerp_(list(ema), list(weights), 1.0 - self.current_decay())   # ema += (1-d) (w - ema)
        for ema, value in self._copied:
            ema.copy_(value)
        self.updates += 1

    def load(self, averaged_state: dict, updates: int) -> None:
        """Continue an average that a checkpoint saved (its `model` and `ema_updates`)."""
        self.module.load_state_dict(averaged_state)
        self.updates = int(updates)


def weight_ema(model: nn.Module, decay: float) -> WeightEMA | None:
    """The average `TrainConfig.ema_decay` asks for: None when it is 0 (off, the official training)."""
    return WeightEMA(model, decay) if decay > 0 else None


def evaluated_model(model: nn.Module, ema: WeightEMA | None) -> nn.Module:
    """The model to evaluate, log and save as `model`: the average when there is one."""
    return model if ema is None else ema.module
