# Two entry points on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench clean

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

lint: $(STAMP)
	$(VENV)/bin/ruff check romer_aihwkit tests benchmarks scripts

bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_calibration.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache demo-results
