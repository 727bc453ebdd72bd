"""notebooks/conftest.py: how the notebooks are split between two pytest-xdist workers. A notebook
that starts from the course's trained detector must run after the notebook that trains it, on the
same worker; every other notebook is a unit of its own."""

import importlib.util
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def load_conftest():
    spec = importlib.util.spec_from_file_location("notebooks_conftest", NOTEBOOKS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_course_detector_notebooks_share_the_trainers_unit_and_come_after_it():
    conftest = load_conftest()
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    units = {nb.stem: conftest.notebook_unit(nb) for nb in notebooks}
    shared = [stem for stem, unit in units.items() if unit == "10_learning_in_minutes"]
    assert shared == ["10_learning_in_minutes", "12_inference_and_attention", "13_finetuning_on_your_data"]
    assert all(unit == stem for stem, unit in units.items() if stem not in shared)


def test_a_cell_is_scheduled_with_its_notebooks_unit():
    conftest = load_conftest()
    root = NOTEBOOKS.parent
    assert conftest.scope("notebooks/12_inference_and_attention.ipynb::Cell 3", root) == "10_learning_in_minutes"
    assert conftest.scope("notebooks/10_learning_in_minutes.ipynb::Cell 0", root) == "10_learning_in_minutes"
    assert conftest.scope("notebooks/07_auxiliary_decoding_losses.ipynb::Cell 5", root) == \
        "07_auxiliary_decoding_losses"
    assert conftest.scope("tests/test_box_ops.py::test_iou", root) == "tests/test_box_ops.py"


def test_the_backbones_maker_starts_first_and_its_users_last():
    conftest = load_conftest()
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    ranks = {nb.stem[:2]: conftest.start_rank(nb, notebooks) for nb in notebooks}
    assert [n for n, r in ranks.items() if r == 0] == ["02"]
    assert [n for n, r in ranks.items() if r == 1] == ["00", "01", "03", "04", "05", "06", "11", "14"]
    # 12 and 13 use no backbone of their own but share 10's unit, so they start with it
    assert [n for n, r in ranks.items() if r == 2] == ["07", "08", "09", "10", "12", "13", "15"]
