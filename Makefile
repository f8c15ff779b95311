# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv test-deps data toolchain lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e .

test-deps: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Fashion-MNIST: Debian's package where apt is at hand, else torchvision's download.
data: venv
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
	  $(BIN)/python -m trainables.data download fashion_mnist; \
	fi

# torch.compile on the CPU (the fast-path tests) needs a C++ compiler: g++ from apt if missing.
toolchain:
	@command -v c++ >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -qq g++ >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq g++)); } || \
	  echo "no C++ compiler and no apt: the torch.compile tests will be skipped"

demo: venv data
	$(BIN)/study run default --name demo-$$(date +%Y%m%d-%H%M%S)

test: test-deps data toolchain
	$(BIN)/python -m pytest -q -m "not gpu" --timeout 900

lint: test-deps
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) studies .pytest_cache
