# openface-py: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, installed before the package so pip never pulls a CUDA build.
# Elsewhere: TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cpu' make demo
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-all lint bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) demos/quickstart.py --out build/demo

test: $(VENV)/.installed
	$(PY) -m ruff check openface_py tests demos benchmarks setup.py
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# every test, also those marked slow (`pytest -m slow --co -q tests` lists them): the torch.compile
# backend against eager (~100 s on 2 cores: Inductor compiles NN4-small2 for three batch shapes)
test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow" tests

lint: $(VENV)/.installed
	$(PY) -m ruff check openface_py tests demos benchmarks setup.py

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_stages.py

clean:
	rm -rf build .pytest_cache
