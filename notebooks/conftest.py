"""How pytest runs the notebooks (`make test-notebooks`: nbval, two notebooks at a time with
pytest-xdist, one per core).

A notebook is one unit of work: one worker runs all its cells, top to bottom, in one kernel. The
notebooks that start from the course's trained detector (those calling `course_detector`) share a
unit with the notebook that trains it when `make train` has not run (the last of
`detr_full.course.COURSE_CHECKPOINTS`), so they run after it, on the same worker. Everything else
notebooks share is made once, by whoever comes first: the data sets (`build_once`) and the
pretrained backbones (`ensure_pretrained`), each behind a file lock.

The units start in this order: first the notebook that pretrains the course's backbone (02), then
those that do not use it, then those that do, so that the second worker fills the minute of 02's
pretraining with notebooks that need nothing from it instead of waiting on the lock.

(The units are made by the scheduler below, not by `xdist_group` marks: xdist 3.8's `--dist
loadgroup` silently ignores the marks on pytest 9.2, pytest-xdist issue #1386.)"""

from functools import cache
from pathlib import Path

import pytest

from detr_full.course import COURSE_CHECKPOINTS

TRAINS_THE_COURSE_DETECTOR = Path(COURSE_CHECKPOINTS[-1]).parent.name   # "10_learning_in_minutes"


@cache
def notebook_unit(notebook: Path) -> str:
    """The unit of work a notebook's cells belong to: its own name, or the course detector's trainer's."""
    if notebook.stem == TRAINS_THE_COURSE_DETECTOR or "course_detector(" in notebook.read_text():
        return TRAINS_THE_COURSE_DETECTOR
    return notebook.stem


def uses_the_course_backbone(notebook: Path) -> bool:
    return "ensure_pretrained(" in notebook.read_text()


def start_rank(notebook: Path, notebooks: list[Path]) -> int:
    """0 for the notebook that pretrains the course's backbone (the first to call `ensure_pretrained`),
    1 for a unit that does not use that backbone, 2 for one that waits for it."""
    unit = [nb for nb in notebooks if notebook_unit(nb) == notebook_unit(notebook)]
    if not any(uses_the_course_backbone(nb) for nb in unit):
        return 1
    return 0 if notebook == min(filter(uses_the_course_backbone, notebooks)) else 2


def pytest_collection_modifyitems(items):
    notebooks = sorted({Path(item.fspath) for item in items if item.fspath.ext == ".ipynb"})
    rank = {nb: start_rank(nb, notebooks) for nb in notebooks}
    items.sort(key=lambda item: rank.get(Path(item.fspath), 1))   # stable: cells keep their order


def scope(nodeid: str, rootpath: Path) -> str:
    """The unit of work of a collected item: its notebook's unit, or for anything else its file."""
    path = nodeid.split("::")[0]
    return notebook_unit(rootpath / path) if path.endswith(".ipynb") else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class NotebookScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, with `scope` (above) as the scope."""

        def _split_scope(self, nodeid: str) -> str:
            return scope(nodeid, config.rootpath)

    return NotebookScheduling(config, log)


# Each notebook's wall time (its cells, kernel start included), summed from the cells' reports, and
# printed at the end against the course's budget (a notebook runs in under 2 minutes at its defaults).
BUDGET_S = 120
_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    notebook = report.nodeid.split("::")[0]
    if notebook.endswith(".ipynb"):
        _seconds[notebook] = _seconds.get(notebook, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook wall time")
    for notebook, seconds in sorted(_seconds.items()):
        over = f"  over the {BUDGET_S} s budget" if seconds > BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:6.0f} s  {Path(notebook).name}{over}")
