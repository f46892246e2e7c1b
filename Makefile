# A first run in two commands (see README.md); both make .venv and install everything on first use.
#   make run     the local pipeline: generated data, tiny settings, a few minutes on a CPU
#   make test    lint and the whole test suite (what CI runs)
# PyTorch: `pip install torch==2.13.0` takes a CUDA build on a normal Linux machine (several GB). On a
# machine without a GPU, take the CPU build: make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Test files run in parallel, one file per worker at a time (module fixtures such as the smoke pipeline are
# built once), the long ones first (tests/conftest.py); `make test TEST_WORKERS=0` runs them in this process.
TEST_WORKERS ?= auto
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run test

# The console's Snakemake logger plugin is its own small package, installed (not editable: Snakemake
# finds plugins only on the path) and reinstalled whenever its files change.
LOGGER := plugins/snakemake-logger-plugin-jowa

$(VENV)/.installed: pyproject.toml $(LOGGER)/pyproject.toml $(wildcard $(LOGGER)/snakemake_logger_plugin_jowa/*.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[workflow,dev]" ./$(LOGGER)
	# LPIPS heads for tokenizer.perceptual_weights: lpips; --no-deps: its torchvision would replace torch
	$(BIN)/python -m pip install --quiet --no-deps "lpips==0.1.4"
	touch $@

run: $(VENV)/.installed
	snakemake --cores all --configfile config/smoke.yaml

test: $(VENV)/.installed
	ruff check .
	ruff format --check .
	python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15
