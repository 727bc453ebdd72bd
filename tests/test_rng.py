"""rng.py: a captured state brings back the same draws of every stream, and survives a safe load."""

import random

import numpy as np
import torch

from detr_full.rng import capture_rng_state, restore_rng_state, seed_everything


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), [random.random() for _ in range(3)]


def test_restore_repeats_every_stream_after_a_weights_only_load(tmp_path):
    seed_everything(7)
    np.random.randn()                     # numpy now holds a cached Gaussian: part of the state too
    torch.save(capture_rng_state(), tmp_path / "rng.pth")
    expected = _draws()
    _draws()                              # move every stream on
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert _draws() == expected


def test_seed_everything_seeds_all_three_streams():
    seed_everything(11)
    a = _draws()
    seed_everything(11)
    assert _draws() == a
    seed_everything(12)
    assert all(x != y for x, y in zip(_draws(), a))
