# make demo  - set up .venv and run the main job: the whole SimCLRv2 pipeline on Fashion-MNIST (from a fresh clone ~7 min with bf16, ~13 AVX2-only, 2 cores; README)
# make test  - set up .venv and run lint (ruff), types (mypy) and the test suite (pytest)
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision versions the project is tested with; override for another platform, e.g.
#   make test TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
BIN = $(VENV)/bin
DEMO_RUN ?= runs/demo/$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup data demo test lint pytest clean

setup: $(VENV)/.installed

# Two steps: what the pipeline needs (torch + the package: all `make demo` waits for), then the test tools
# (pytest, ruff, mypy, onnx, and TensorFlow for tests/interop: another ~2 minutes of install).
# --no-compile: Python compiles the modules it imports on first use instead of all of torch's at install
# (measured on the loaded 2-core machine: 84 s of CPU for install + first import against 111 s).
$(VENV)/.installed-run: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "simclrv2 needs Python >= 3.10"'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
	  echo "python3 venv module missing: installing python3-venv"; \
	  apt-get update -q && apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile $(TORCH)
	$(BIN)/pip install -q --no-compile -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's package when it is missing and apt is available (the code also finds it
# under data/ or downloads it with --set data.download=true).
data:
	@if [ -d $(FMNIST_DIR) ]; then echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  sudo apt-get update -q && sudo apt-get install -y -q dataset-fashion-mnist; \
	else echo "warning: cannot install dataset-fashion-mnist; put the IDX files under data/fashion-mnist/"; fi

demo: $(VENV)/.installed-run data
	$(BIN)/simclrv2 pipeline --config configs/fashion_mnist.yaml --set run_dir=$(DEMO_RUN)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

pytest: setup data
	$(BIN)/pytest

test: lint pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
