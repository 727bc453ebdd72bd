"""How pytest runs the notebooks (`make test-notebooks`: nbval, two notebooks at a time with
pytest-xdist's `--dist loadgroup`, one per core).

Every cell of a notebook joins one group, so that one worker runs the whole notebook, top to bottom,
in one kernel. The notebooks that start from the course's trained detector (those calling
`course_detector`) join the group of the notebook that trains it when `make train` has not run
(the last of `detr_full.course.COURSE_CHECKPOINTS`), so they run after it, on the same worker.
Everything else notebooks share is made once whoever comes first: the data sets (`build_once`) and
the pretrained backbone (`ensure_pretrained`, behind a file lock)."""

from pathlib import Path

import pytest

from detr_full.course import COURSE_CHECKPOINTS

TRAINS_THE_COURSE_DETECTOR = Path(COURSE_CHECKPOINTS[-1]).parent.name   # "10_learning_in_minutes"


def notebook_group(notebook: Path) -> str:
    """The xdist group of a notebook's cells: its own name, or the course detector's trainer's."""
    if notebook.stem == TRAINS_THE_COURSE_DETECTOR or "course_detector(" in notebook.read_text():
        return TRAINS_THE_COURSE_DETECTOR
    return notebook.stem


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which turns the marks into groups
def pytest_collection_modifyitems(items):
    groups = {}
    for item in items:
        if item.path.suffix == ".ipynb":
            group = groups.setdefault(item.path, notebook_group(item.path))
            item.add_marker(pytest.mark.xdist_group(group))
