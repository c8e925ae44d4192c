# The two commands the README opens with: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit bench tck dcp-tck interop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m connector.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

tck: $(STAMP)
	$(PY) interop/tck/run.py

dcp-tck: $(STAMP)
	$(PY) interop/dcp-tck/run.py

interop: $(STAMP)
	$(PY) interop/edc/run.py

# `make soak`: the long checks, not part of `make test` (README, "Soak tests").
.PHONY: soak soak-crash
# Seconds of SIGKILLs under load in the crash soak (half of soak's ten minutes).
CRASH_SOAK_S ?= 300

soak: soak-crash

soak-crash: $(STAMP)
	CRASH_SOAK_S=$(CRASH_SOAK_S) $(PY) -m tests.crash

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
