# Two entry points for a fresh machine: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install real-scale

install: $(STAMP)

# (Re)install whenever pyproject.toml changes; torch/torchvision come from the machine's local cache.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) cli.py fit --config configs/attack/photos.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check lit_sdo tests benchmarks cli.py

# Every paper config at full model size (random weights in the released layouts, built once into
# runs/real_scale/models, ~17 GB), one optimisation step each on the CPU, plus one SD1.5 reward step per policy:
# SDO, and last_k = 1..4 with checkpointing (their mean: AlignProp-uniform's expected cost). Not part of
# `make test`: about two hours on 2 cores. REAL_SCALE_ARGS="--only ..."
real-scale: $(STAMP)
	$(PY) benchmarks/real_scale.py --reward-cost $(REAL_SCALE_ARGS)
