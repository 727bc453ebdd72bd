"""The random streams of a training run: seed them all, and capture or restore them all.

A checkpoint stores `capture_rng_state()` so that `--resume` continues a run bit for bit; anything
that must not shift the training's draws (an evaluation in the middle of a run) restores them
afterwards. The states are tensors and plain values, so checkpoints load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng_state() -> dict:
    """torch / CUDA / numpy / Python RNG states as tensors and plain values (weights_only-loadable)."""
    version, internal, gauss_next = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
