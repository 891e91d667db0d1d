# Two entry points for a fresh machine: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install

install: $(STAMP)

# (Re)install whenever pyproject.toml changes; torch/torchvision come from the machine's local cache.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) cli.py fit --config configs/attack/digits.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check lit_sdo tests benchmarks cli.py
