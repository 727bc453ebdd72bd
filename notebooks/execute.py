"""Execute a course notebook in place with papermill, keeping the file clean.

    python notebooks/execute.py notebooks/12_inference_and_attention.ipynb [-p name value ...]
    python notebooks/execute.py notebooks/11_full_training.ipynb --from outputs/11_full_training.ipynb

runs the notebook from the repository's notebooks/ folder (as JupyterLab and nbval do), writes
the outputs into the same file, and removes the cell papermill adds for the given parameters: the
committed notebook keeps its own defaults, so that opening or testing it runs those. With `--from`
it executes nothing and takes the outputs of a run papermill already made of this notebook (make
train's of 11: its training log, not a resumed run's "nothing to train"), that cell removed the same
way. `make notebooks` uses it for every notebook.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import nbformat
import papermill


def execute(path: Path, parameters: dict[str, str]) -> None:
    papermill.execute_notebook(str(path), str(path), parameters=parameters, kernel_name="python3",
                               cwd=str(Path(__file__).resolve().parent), progress_bar=False)
    keep_defaults(path, path)


def keep_defaults(executed: Path, path: Path) -> None:
    """`path` with the outputs of `executed`, a papermill run of it: every code cell takes the outputs of
    the run's cell with the same source (papermill's parameters cell left out); the markdown is
    `path`'s own, so its text may have been edited since. A code cell the run does not have is refused."""
    notebook = nbformat.read(path, as_version=4)
    ran = nbformat.read(executed, as_version=4)
    runs = iter([c for c in ran.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])])
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        match = next((c for c in runs if c.source == cell.source), None)
        if match is None:
            raise SystemExit(f"{executed} is not a run of this {path}: no cell of it has the code of\n"
                             f"{cell.source[:200]}\nRun the notebook again (for 11: make train).")
        cell.outputs, cell.execution_count = match.outputs, match.execution_count
        cell.metadata = match.metadata
    notebook.metadata = ran.metadata
    nbformat.write(notebook, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--from", dest="executed", type=Path, default=None,
                        help="take the outputs of this papermill run of the notebook instead of executing it")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter, as papermill's -p (the value is read as Python when it can be)")
    args = parser.parse_args(argv)
    parameters = {}
    for name, value in args.p:
        try:
            parameters[name] = ast.literal_eval(value)   # True, 12, 0.5 or None, as papermill's -p reads them
        except (ValueError, SyntaxError):
            parameters[name] = value                     # anything else is text
    if args.executed is not None:
        keep_defaults(args.executed, args.notebook)
    else:
        execute(args.notebook, parameters)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
