# Everything a fresh machine needs: `make demo` and `make test` set up the environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KD := $(VENV)/bin/kdserve
DEMO := demo-out
E := examples/digits

.PHONY: setup demo demo-cli test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel on disk; the project's range (torch>=2.10) keeps it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,onnx]'
	touch $@

setup: $(VENV)/.installed

# The service demo: embedded `kdserve up`, a scratch teacher, promotion, a FitNets student,
# download and report; then the service stops.
demo: setup
	$(PY) examples/service_demo.py $(DEMO)

# The same models through the engine's command line only (no service).
demo-cli: setup
	$(PY) examples/make_digits.py $(DEMO)
	$(KD) train --arch $(E)/teacher.json --data $(DEMO)/digits-train.npz --val $(DEMO)/digits-test.npz \
		--config $(E)/scratch.json --out $(DEMO)/teacher --fresh
	$(KD) inspect --arch $(E)/student.json --input-shape 1,8,8
	$(KD) distill --teacher $(DEMO)/teacher/student.safetensors --teacher-arch $(E)/teacher.json \
		--student $(E)/student.json --data $(DEMO)/digits-train.npz --val $(DEMO)/digits-test.npz \
		--config $(E)/fitnet.json --out $(DEMO)/student --fresh
	$(KD) evaluate --model $(DEMO)/student --data $(DEMO)/digits-test.npz

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy kdcore cli api worker store client benchmarks tests examples

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/teacher_cache.py
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/api_latency.py
	$(PY) benchmarks/sandbox_start.py
	$(PY) benchmarks/load_test.py

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
