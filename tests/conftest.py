"""Shared fixtures. The golden fixtures come from the official DETR (see ../shared/golden/README.md)."""

import os
from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(os.environ.get("DETR_GOLDEN_DIR", Path(__file__).resolve().parents[2] / "shared" / "golden"))


def golden_path(name: str) -> Path:
    """Path of a golden file; skips the test when the folder is absent, except in CI where that fails."""
    path = GOLDEN_DIR / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"golden fixture {path} is missing (set DETR_GOLDEN_DIR)")
        pytest.skip(f"golden fixture {path} not available")
    return path


@pytest.fixture(scope="session")
def golden() -> dict:
    """golden_public_small.pt: the official DETR's weights, inputs, outputs, losses and units."""
    return torch.load(golden_path("golden_public_small.pt"), weights_only=True)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one torch thread: on a busy 2-core machine two threads wait on each other."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden_model(golden):
    """Our DETR with the fixture's config and the official weights, in eval mode."""
    from detr_full import DETRConfig, build_detr

    model = build_detr(DETRConfig(**golden["config"]["overrides"]))[0]
    model.load_state_dict({k: v.float() for k, v in golden["state_dict"].items()})
    return model.eval()


@pytest.fixture
def verdict(capsys):
    """verdict(checker, fn, *words): run an exercise checker on `fn`, assert it printed exactly one line
    holding every one of `words`, and return what the checker returned (True: accepted)."""
    def run(checker, fn, *expected_words):
        ok = checker(fn)
        out = capsys.readouterr().out
        assert out.count("\n") == 1, out
        for word in expected_words:
            assert word in out, out
        return ok
    return run
