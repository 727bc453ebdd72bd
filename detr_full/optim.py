"""The optimiser and the learning-rate warm-up of a DETR training.

`build_optimizer` is the official main.py's AdamW with two parameter groups (the backbone gets
its own, smaller learning rate; 0 freezes it). `LinearWarmup` is not in the official code: a
linear ramp of every group's lr over the first iterations (`warmup_steps`; 0, the default, is the
official schedule; the shapes recipe uses 100).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_full.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups as the official main.py: non-backbone (lr) first, backbone (lr_backbone).
    On a GPU the fused implementation (one kernel for all tensors, and a step that skips itself where the
    loss was not finite: engine.py); on the CPU the default, whose results the course's runs were measured
    with (the fused one agrees within float rounding: tests/test_optim.py)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if "backbone" not in n]},
              {"params": [p for n, p in named if "backbone" in n], "lr": cfg.lr_backbone}]
    on_gpu = bool(named) and named[0][1].device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if on_gpu else None)


class LinearWarmup:
    """Per-iteration linear lr warm-up: iteration i < warmup_steps uses lr * (i + 1) / warmup_steps.

    It scales `group["lr"]` in place, like a LambdaLR, and composes with the per-epoch StepLR
    (which also scales `group["lr"]`). Call `step()` after every `optimizer.step()`;
    `state_dict()` / `load_state_dict()` make it part of the checkpoint.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int):
        self.optimizer, self.warmup_steps, self.step_count = optimizer, warmup_steps, 0
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self._set(self.factor(0))

    def factor(self, step: int) -> float:
        return 1.0 if step >= self.warmup_steps else (step + 1) / self.warmup_steps

    def _set(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self) -> None:
        old = self.factor(self.step_count)
        self.step_count += 1
        new = self.factor(self.step_count)
        if new == old:
            return
        for i, group in enumerate(self.optimizer.param_groups):
            undecorated = group["lr"] / old
            if not math.isclose(undecorated, self.base_lrs[i], rel_tol=1e-6):
                self.base_lrs[i] = undecorated  # the StepLR dropped the lr during warm-up
        self._set(new)  # base * 1.0 at the end: exactly the scheduled lr, no rounding drift

    def state_dict(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.warmup_steps, self.step_count = int(state["warmup_steps"]), int(state["step_count"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
