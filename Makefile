# Each target sets up what it needs: a .venv, rebuilt only when pyproject.toml or
# constraints.txt change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m aioloader demo

bench: $(STAMP)
	$(PY) -m bench --workload all

lint: $(STAMP)
	$(VENV)/bin/ruff check aioloader tests bench examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
