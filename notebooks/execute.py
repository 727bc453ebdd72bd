"""Execute a course notebook in place with papermill, keeping the file clean.

    python notebooks/execute.py notebooks/11_full_training.ipynb -p full_shapes True -p resume auto

runs the notebook from the repository's notebooks/ folder (as JupyterLab and nbval do), writes
the outputs into the same file, and removes the cell papermill adds for the given parameters: the
committed notebook keeps its own defaults, so that opening or testing it runs those. `make
notebooks` uses it for every notebook (and for 11 with make train's parameters).
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
    notebook = nbformat.read(path, as_version=4)
    notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nbformat.write(notebook, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter, as papermill's -p (the value is read as Python when it can be)")
    args = parser.parse_args(argv)
    parameters = {}
    for name, value in args.p:
        try:
            parameters[name] = ast.literal_eval(value)   # True, 12, 0.5 or None, as papermill's -p reads them
        except (ValueError, SyntaxError):
            parameters[name] = value                     # anything else is text
    execute(args.notebook, parameters)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
