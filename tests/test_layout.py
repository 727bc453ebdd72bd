"""The package's layering, read from its imports: the official model knows no successor, the data
pipeline no model, and no library module uses the CLI."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "detr_full"
CORE = ("detr.py", "transformer.py", "backbone.py", "matcher.py", "criterion.py", "postprocess.py",
        "classification.py", "position_encoding.py", "box_ops.py")
MODEL_MODULES = ("detr_full.detr", "detr_full.backbone", "detr_full.transformer", "detr_full.build",
                 "detr_full.successors")


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                   # relative: resolve against the file's package
                package = path.parent.relative_to(PACKAGE.parent).parts
                base = ".".join(package[:len(package) - node.level + 1] + ((base,) if base else ()))
            names.add(base)
    return names


@pytest.mark.parametrize("name", CORE)
def test_the_core_imports_no_successor(name):
    assert not [m for m in imported(PACKAGE / name) if m.startswith("detr_full.successors")]


def test_the_data_pipeline_imports_no_model_module():
    for path in (PACKAGE / "data").glob("*.py"):
        assert not [m for m in imported(path) if m.startswith(MODEL_MODULES)], path.name


def test_no_library_module_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if path.name != "train.py":
            assert "detr_full.train" not in imported(path), path.relative_to(PACKAGE)


def test_the_helper_reads_relative_imports():
    assert "detr_full.data.collate" in imported(PACKAGE / "data" / "loaders.py")
