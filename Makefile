# Two entry points on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-reference reference-env lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/romer-aihwkit demo

test: $(STAMP)
	$(VENV)/bin/ruff check romer_aihwkit tests benchmarks scripts
	$(VENV)/bin/mypy romer_aihwkit
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)  # pytest exits 5 when no test carries the marker: that is not a failure
	$(PY) -m pytest -m slow -q || [ $$? -eq 5 ]

reference-env:  # .venv-ref: torch 2.10.0 + aihwkit 1.1.0, where AIHWKit's C++ tiles run
	bash scripts/reference_env.sh

test-reference:  # the stacked engine against AIHWKit's C++ tiles (builds .venv-ref first)
	bash scripts/reference_env.sh --test

lint: $(STAMP)
	$(VENV)/bin/ruff check romer_aihwkit tests benchmarks scripts

bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_calibration.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache demo-results  # .venv-ref stays: `rm -rf .venv-ref`
