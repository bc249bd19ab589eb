# The few commands people type. Everything is installed by these targets themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := .local-cluster/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export TESSERA_DATA ?= $(abspath ../shared/data)

.PHONY: help venv torch demo-torch tools image prometheus cluster-up cluster-down crds demo test test-unit bench lint train train-jct clean helm-lint kind-up kind-down

help:
	@echo "make demo          set everything up, start a local cluster, run the operator, place the examples"
	@echo "make test          run the whole test suite (unit + real control plane)"
	@echo "make demo-torch    a real PyTorch job (DDP, CPU) shrunk on a node failure and grown back"
	@echo "make cluster-up    start (or reuse) the local control plane with fake GPU/NPU nodes"
	@echo "make cluster-down  stop it"
	@echo "make crds          regenerate crds/ and the chart's CRDs from tessera.api"
	@echo "make bench         run the benchmarks (JSON + markdown in bench/results/)"
	@echo "make lint          ruff + mypy"
	@echo "make helm-lint     helm lint --strict on the chart (default and kind values)"
	@echo "make image         the operator's OCI image, without Docker (build/image/tessera-operator; docs/helm.md)"
	@echo "make kind-up       kind cluster + kwok + the chart + the examples (needs Docker; docs/kind.md)"

# The venv is rebuilt when pyproject.toml changes. pip's cache makes a rebuild cheap.
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.stamp

# PyTorch (the [torch] extra) for the real elastic-training test, bench and demo. Its own
# stamp; its wheels (~3 GB with the nvidia-* libraries PyPI's Linux wheel needs) are kept in
# $(WHEELS), so a venv rebuild installs them without downloading again.
WHEELS ?= $(HOME)/.cache/tessera/wheels
$(VENV)/.torch-stamp: $(VENV)/.stamp
	$(PY) -m pip download --quiet --dest $(WHEELS) 'torch>=2.4'
	$(PY) -m pip install --quiet --find-links $(WHEELS) -e '.[dev,torch]'
	touch $@

torch: $(VENV)/.torch-stamp

tools:
	bash hack/build-tools.sh
	bash hack/kind-up.sh --tools-only

# the operator image as an OCI layout, no Docker engine (root: debootstrap + chroot)
image: venv
	PYTHON=$(abspath $(PY)) bash hack/build-image.sh

# Prometheus server for the LoadSource tests (Debian package; no-op when on PATH)
prometheus:
	bash hack/install-prometheus.sh

cluster-up: venv tools
	TESSERA_KUBE_SCHEDULER=$${TESSERA_KUBE_SCHEDULER:-1} bash hack/cluster-up.sh

cluster-down:
	bash hack/cluster-down.sh

crds: venv
	$(PY) -m tessera.api.crdgen --out crds --out helm/tessera/crds

demo: venv tools
	bash hack/demo.sh

# real PyTorch training resharded by the operator (private cluster; --path torchrun: DEMO_TORCH_ARGS)
demo-torch: torch tools
	$(PY) hack/demo_torch.py $(DEMO_TORCH_ARGS)

test: venv torch tools prometheus
	TESSERA_REQUIRE_CLUSTER=1 $(PY) -m pytest

test-unit: venv
	$(PY) -m pytest -m "not cluster"

bench: venv
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

train: venv
	$(PY) -m tessera.policies.learned.train

# the learned JCT dispatcher (policies/learned/gavel-jct-v1), trained in the simulator on Gavel's setting
train-jct: venv
	$(PY) -m tessera.sim.train_jct

clean:
	rm -rf $(VENV) .local-cluster build *.egg-info

# helm from `make tools` is stamped with the pinned Kubernetes version (hack/build-tools.sh)
helm-lint: tools
	helm lint --strict helm/tessera
	helm lint --strict helm/tessera --values hack/kind-values.yaml

kind-up: tools
	bash hack/kind-up.sh

kind-down:
	bash hack/kind-down.sh
