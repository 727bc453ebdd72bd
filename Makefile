# make test       create .venv if missing, then run the tests and every notebook (nbval)
# make train      the main job: notebook 09 run headless by papermill; COCO=/path/to/coco for COCO
# make notebooks  re-execute every notebook in place (papermill), keeping their outputs
# make bench      CPU speed of the core next to the official implementation
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1
NBVAL  := --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: test test-notebooks train notebooks bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest
	$(MAKE) test-notebooks

# Every notebook under nbval (check cells compared, the rest must run), then one papermill run of
# 09 with overridden parameters, proving that injection works.
test-notebooks: $(VENV)/.installed
	$(PY) -m pytest $(NBVAL) notebooks/
	mkdir -p outputs
	$(PY) -m papermill notebooks/09_full_coco_training.ipynb outputs/09_papermill_check.ipynb -k python3 \
		--cwd notebooks -p epochs 1 -p batch_size 4 -p output_dir outputs/09_papermill_check

# DETR on the synthetic shapes set, backbone pretraining included, sized for 2 CPU cores (detr_full.
# config.shapes_cpu_recipe; the same as `python -m detr_full.train --recipe shapes_cpu`), or the paper's
# recipe on COCO. Writes outputs/09_full_coco_training.ipynb (executed) and the checkpoint, log and
# plots under outputs/shapes (or outputs/coco); run again, it resumes an interrupted run.
COCO ?=
train: $(VENV)/.installed
	mkdir -p outputs
	$(PY) -m papermill notebooks/09_full_coco_training.ipynb outputs/09_full_coco_training.ipynb -k python3 \
		--cwd notebooks --log-output \
		-p resume auto $(if $(COCO),-p coco_path $(abspath $(COCO)),-p full_shapes True)

notebooks: $(VENV)/.installed
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
		../$(PY) -m papermill $$nb $$nb -k python3 --cwd . || exit 1; done

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py
