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

# DETR from random init on the synthetic shapes set (generated into data/shapes on first use),
# sized for 2 CPU cores and ~15 min; the flags are detr_full.config.shapes_cpu_recipe(), whose
# comments say why each departs from the official recipe. Writes outputs/shapes/{checkpoint.pth,
# log.txt,plots.png} and prints the COCO table after every epoch.
SHAPES_RECIPE := --backbone resnet18 --no_frozen_bn --train_stem --backbone_stride 16 \
	--lr 5e-4 --lr_backbone 5e-4 --warmup_steps 200 --clip_max_norm 0.1 --pre_norm \
	--hidden_dim 128 --enc_layers 2 --dec_layers 2 --dim_feedforward 512 --dropout 0.0 \
	--num_queries 20 --batch_size 8 --scales 128,144,160,176 --max_size 224 --val_size 160 \
	--epochs 5 --lr_drop 4 --num_workers 1

train: $(VENV)/.installed
	$(PY) -m detr_full.train --output_dir outputs/shapes $(SHAPES_RECIPE)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py
