"""Data sets the project prepares itself on first use (data/shapes, data/trees): made once into a
temporary sibling folder and renamed into place, so that an interrupted run never leaves a
half-written data set behind, and a folder someone else made is never overwritten. A second process
asking for the same set meanwhile (two notebooks tested side by side) waits for the first, then uses it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock

MARKER = Path("annotations") / "instances_val2017.json"   # written last: its presence marks a finished set


def maker_lock(path: Path) -> FileLock:
    """The lock that whoever makes `path` (a data set, a cached weight file) holds meanwhile: an empty
    `.<name>.lock` file beside it (its folder made if missing), left in place once made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.parent / f".{path.name}.lock")


def build_once(root: Path, make: Callable[[Path], object], what: str) -> Path:
    """`root` when it holds a finished data set (MARKER), else `make(tmp)` then `tmp` renamed to `root`.
    `what` names the data set and its maker in the error for a folder that is not one."""
    marker = root / MARKER
    if marker.is_file():
        return root
    with maker_lock(root):
        return _make_unless_made(root, make, what)


def _make_unless_made(root: Path, make: Callable[[Path], object], what: str) -> Path:
    marker = root / MARKER
    if marker.is_file():       # made by the process that held the lock before us
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{what}: {root} exists but holds no {MARKER}, so it is not a finished data set. Delete or move "
            "it, or pass another root.")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover (same pid), e.g. from an interrupted call in this process
    try:
        make(tmp)
        os.replace(tmp, root)  # atomic; replaces an empty `root` folder too
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
