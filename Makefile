# make test   create .venv if missing, then run the whole test suite
# make train  the main job (see README)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: test train bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest

train: $(VENV)/.installed
	@echo "make train: the training job is not implemented yet (see the training issue); nothing was trained."
	@exit 1

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py
