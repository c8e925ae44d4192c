# The two commands the README opens with: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-postgres lint unit bench tck dcp-tck interop interop-015 example-mobility soak soak-fuzz soak-crash image deploy-check examples clean

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

# Every suite that starts daemons (end-to-end, fuzz, console, management contract) again with
# each daemon's state in PostgreSQL (Debian's package, started by the test set-up); `make test`
# runs them on SQLite. CI runs both (~5 min more).
test-postgres: $(STAMP)
	CONNECTOR_E2E_ENGINES=postgres $(PY) -m pytest -q tests/e2e tests/fuzz tests/console tests/contract

# The long forms of the robustness suites (README "Soak"). `make test` runs each short.
soak: soak-fuzz soak-crash

# 5,000 generated and mutated DSP messages and 2,000 management calls against running
# daemons; FUZZ_SEED=N replays a run.
soak-fuzz: $(STAMP)
	FUZZ_DSP_REQUESTS=$${FUZZ_DSP_REQUESTS:-5000} \
	FUZZ_MANAGEMENT_REQUESTS=$${FUZZ_MANAGEMENT_REQUESTS:-2000} \
	$(PY) -m pytest -q -s tests/fuzz

# Every benchmark (bench/README.md); BENCH="labs --labs 10" runs only the ones named.
BENCH ?=

bench: $(STAMP)
	$(PY) -m bench $(BENCH)

tck: $(STAMP)
	$(PY) interop/tck/run.py

dcp-tck: $(STAMP)
	$(PY) interop/dcp-tck/run.py

interop: $(STAMP)
	$(PY) interop/edc/run.py

# EDC 0.15.1 with EDC's IdentityHub 0.15.1 as its wallet (DCP), both directions and revocation
# (interop/edc/README.md "EDC 0.15.1 and IdentityHub 0.15.1"). Builds both with Maven once.
interop-015: $(STAMP)
	$(PY) interop/edc/run.py --edc-version 0.15

# The container image (podman; deploy/README.md). Installs podman, runc and debootstrap and
# builds the local Debian base when absent. BASE=... IMAGE=... override the defaults.
image: $(STAMP)
	PYTHON=$(PY) bash deploy/image.sh

# The image run as provider and consumer (catalogue -> negotiation -> pull); deploy/compose.yaml
# run with podman-compose (two replicas behind HAProxy on PostgreSQL, Prometheus scraping them,
# one replica killed); the Helm chart (one and two replicas) linted, rendered and validated
# against the Kubernetes schemas; the alert rules checked. deploy/README.md tells each step.
deploy-check: $(STAMP)
	$(PY) deploy/check.py

# The examples/ data spaces in their small sizes (examples/README.md), each a script that
# prints what its README says and exits non-zero on any mismatch.
# mobility-edc assembles EDC 0.15.1 and IdentityHub with Maven on its first run (from Maven
# Central, as `make tck` does; ~45 s once ~/.m2 holds the artifacts).
EXAMPLES ?= farm-data lab-results public-reuse health-consent mobility-edc

examples: $(STAMP)
	@set -e; for example in $(EXAMPLES); do \
		echo "== examples/$$example"; $(PY) examples/$$example/run.py; done

# EONA-X: our connector and an EDC 0.15.1 member (IdentityHub as its wallet) in one DCP mobility
# space (examples/mobility-edc/README.md). Not in EXAMPLES: it builds EDC with Maven on first use.
example-mobility: $(STAMP)
	$(PY) examples/mobility-edc/run.py

# Seconds of SIGKILLs under load in the crash soak: with soak-fuzz's minute and the checks,
# `make soak` takes about ten minutes. CRASH_ENGINE=postgres: both daemons' state in
# PostgreSQL (Debian's package, a server started for the run).
CRASH_SOAK_S ?= 480

soak-crash: $(STAMP)
	CRASH_SOAK_S=$(CRASH_SOAK_S) $(PY) -m tests.crash

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
