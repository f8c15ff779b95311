# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# The exact versions the tests passed with; `make ... CONSTRAINTS=` installs the newest allowed.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: demo test test-fast venv test-deps data toolchain browser lint bench clean gpu-bundle gpu-rehearsal \
	cluster-rehearsal \
	constraints docs docs-serve docs-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q $(PIN) -e '.[tools]'

test-deps: $(BIN)/python
	$(BIN)/pip install -q $(PIN) -e '.[test,tools,bench,cluster,docs]'

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

# Headless Chromium and its driver for the report-in-the-MLflow-UI test, from apt where at hand.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)); } || \
	  echo "no Chromium and no apt: the MLflow UI report test will be skipped"

test: test-deps data toolchain browser
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/python -m pytest -q -m "not gpu" --timeout 900 --durations 15

# The manual (mkdocs.yml, docs/): built strictly (a broken link, marker or undocumented setting
# fails) into site/, or served while you edit it. Its tables are generated from the code.
docs-deps: $(BIN)/python
	$(BIN)/pip install -q $(PIN) -e '.[docs]'

docs: docs-deps
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: docs-deps
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

# cluster.yaml's autoscaled cloud on this machine: Ray's autoscaler on its fake provider launches
# GPU workers from zero, replaces a preempted spot node, falls back to on-demand, scales down.
cluster-rehearsal: test-deps data
	$(BIN)/python -m pytest -v -m slow --timeout 900 tests/test_cluster_rehearsal.py

test-fast: test-deps data
	$(BIN)/python -m pytest -q -m "not slow and not gpu" --timeout 900

# After an upgrade that passed `make test CONSTRAINTS=`: pin what it passed with.
constraints: venv
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^#'; } > constraints.new
	mv constraints.new constraints.txt

# The GPU check on a bare GPU image (bench/gpu_check.sh): wheels of what the image lacks, pinned to
# this venv's versions, for GPU_PYTHON (3.12, the lent machine's; e.g. 3.11 for a rehearsal here).
GPU_PYTHON ?= 3.12
GPU_BUNDLE := .gpu-bundle
GPU_PLATFORMS := $(foreach n,28 27 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64
gpu-bundle: venv
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)
	$(BIN)/python -c "import importlib.metadata as m, sys; [print(f'{n}=={m.version(n)}') for n in sys.argv[1:]]" \
	  $$(grep -v '^#' bench/gpu_bundle.txt) > $(GPU_BUNDLE)/requirements.txt
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	  $(GPU_PLATFORMS) -d $(GPU_BUNDLE) -r $(GPU_BUNDLE)/requirements.txt
	@echo "$(GPU_BUNDLE)/: $$(ls $(GPU_BUNDLE)/*.whl | wc -l) wheels for Python $(GPU_PYTHON), $$(du -sh $(GPU_BUNDLE) | cut -f1)"

# The lent GPU machine's situation on this CPU machine: a fresh venv with only the image's packages
# (torch and torchvision as installed here; no Ray, Optuna, MLflow or pydantic), the bundle for this
# Python installed by gpu_check.sh with --no-index, then its smoke run.
REHEARSAL := .gpu-rehearsal
IMAGE_PACKAGES := torch==2.14.1 torchvision==0.29.1 timm pyarrow numpy scipy scikit-learn matplotlib \
	pandas pyyaml pytest pytest-timeout rich torchmetrics pillow hypothesis seaborn packaging
gpu-rehearsal:
	rm -rf $(REHEARSAL) && $(PYTHON) -m venv $(REHEARSAL)/venv
	$(REHEARSAL)/venv/bin/pip install -q $(IMAGE_PACKAGES)
	$(MAKE) gpu-bundle GPU_BUNDLE=$(REHEARSAL)/bundle \
	  GPU_PYTHON=$$($(REHEARSAL)/venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
	! $(REHEARSAL)/venv/bin/python -c 'import ray' 2>/dev/null
	! $(REHEARSAL)/venv/bin/python -c 'import optuna' 2>/dev/null
	! $(REHEARSAL)/venv/bin/python -c 'import mlflow' 2>/dev/null
	SHARPCAL_GPU_CHECK_SMOKE=1 SHARPCAL_GPU_BUNDLE=$(REHEARSAL)/bundle PYTHON=$(REHEARSAL)/venv/bin/python \
	  bash bench/gpu_check.sh $(REHEARSAL)/out
	@test "$$(ls $(REHEARSAL)/out | wc -l)" -le 8 && echo "gpu-rehearsal: passed; $$(ls $(REHEARSAL)/out | wc -l) files in $(REHEARSAL)/out"

lint: test-deps
	$(BIN)/ruff check .

# Everything `make demo` and `make test` made: the venv, the studies, the default MLflow store,
# the built manual.
clean:
	rm -rf $(VENV) studies mlflow.db mlruns .pytest_cache $(GPU_BUNDLE) $(REHEARSAL) site
