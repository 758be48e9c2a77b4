# Continuum — `make demo` runs the whole continuum locally; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install test-deps lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Continuum with the server and dev extras

demo: install  ## run the demo: control plane, broker, two agents, simulated sites, workflows
	$(BIN)/continuum demo

test-deps:  ## install what the tests start for real (Mosquitto, Slurm, Prometheus, kubectl, umoci, podman), build the Slurm 24.11/26.05 roots, the Kubernetes test bed, helm and the image's Debian root
	bash deploy/dev/install-test-deps.sh
	bash deploy/dev/slurm.sh build --release 24.11
	bash deploy/dev/slurm.sh build --release 26.05
	bash deploy/dev/kube.sh build
	bash deploy/dev/helm.sh build
	bash deploy/image/build.sh --base

test: install test-deps  ## run the whole test suite
	$(BIN)/python -m pytest -q

lint: install  ## ruff, mypy (strict for continuum, placement, adapters) and the layer contracts
	$(BIN)/ruff check .
	$(BIN)/mypy continuum edge_agent adapters placement monitoring control_plane
	$(BIN)/lint-imports

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
