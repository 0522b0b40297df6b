# The two commands of this template: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
DEMO_DIR := build/demo
# torch goes in first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-multinode test-quick bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# Generate a project with the default answers and train it on the bundled dataset.
demo: setup
	rm -rf $(DEMO_DIR)
	$(BIN)/cookiecutter --no-input --output-dir $(DEMO_DIR) .
	cd $(DEMO_DIR)/research-project && $(BIN)/pip install --quiet -e ".[dev]" && $(BIN)/python train.py

# The template's tests, the generated project's own test suite among them, but for its tests on
# a cluster of several nodes: those take `make test-multinode` (about 8 minutes on 2 cores),
# which would take CI past its 30 minutes.
test: setup
	$(BIN)/python -m pytest tests -m "not multinode"

test-multinode: setup
	$(BIN)/python -m pytest tests -m multinode

# Everything but real Ray runs (a few minutes): the generated project's quick tests among them,
# on one bake (tests/test_generated_project.py); `make test` adds its slow ones.
test-quick: setup
	$(BIN)/python -m pytest tests -m "not slow and not multinode"

# Benchmarks against plain Lightning, a raw PyTorch loop, Hydra's basic sweep and FastAPI (about
# 30 minutes on 2 cores; not a test). Writes $(BENCH_DIR)/results.json and results.md.
# BENCH_ARGS: e.g. --quick, --only training,serving, --repeats 1.
BENCH_DIR := build/bench
BENCH_ARGS ?=
bench: setup
	rm -rf $(BENCH_DIR)
	$(BIN)/cookiecutter --no-input --output-dir $(BENCH_DIR) .
	$(BIN)/pip install --quiet -e "$(BENCH_DIR)/research-project[dev]"
	$(BIN)/python -m benchmarks.run --project $(BENCH_DIR)/research-project --out $(BENCH_DIR) $(BENCH_ARGS)

clean:
	rm -rf build $(VENV)
