# Two commands: `make run` (install into .venv, start the local model and the proxy) and
# `make test` (install the test extras, run the whole suite). `make bench` prints the benchmark.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.example.yaml

# llama.cpp is compiled from source on first install (about 6 minutes on 2 cores; pip caches
# the wheel). Its AMX kernels crash on CPUs that advertise AMX but cannot run them (seen on this
# project's Xeon machines), so build a portable AVX2 library without them.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: run test check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[local]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[local,dev]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(VENV)/bin/perg-proxy serve --config $(CONFIG) --with-local-model

test: $(VENV)/.test-installed
	$(PY) -m pytest

# The static checks CI runs before the tests: lint, formatting, types.
check: $(VENV)/.test-installed
	$(VENV)/bin/ruff check proxy tests bench deploy
	$(VENV)/bin/ruff format --check proxy tests bench deploy
	$(VENV)/bin/mypy

bench: $(VENV)/.test-installed
	$(PY) bench/proxy_overhead.py

clean:
	rm -rf $(VENV) .perg .pytest_cache
