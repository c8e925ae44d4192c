# The two commands the README opens with: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit bench tck dcp-tck interop image deploy-check clean

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

# The container image (podman; deploy/README.md). Installs podman, runc and debootstrap and
# builds the local Debian base when absent. BASE=... IMAGE=... override the defaults.
image: $(STAMP)
	PYTHON=$(PY) bash deploy/image.sh

# The image run as provider and consumer (catalogue -> negotiation -> pull), the Helm chart
# linted, rendered and validated against the Kubernetes schemas, the alert rules checked.
deploy-check: $(STAMP)
	$(PY) deploy/check.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
