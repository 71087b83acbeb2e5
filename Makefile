# The single entry point. `make test` is what CI runs.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
TESTENV := tools/testenv

.PHONY: help setup test test-unit test-cluster lint fmt typecheck testenv-build testenv-up \
	testenv-down demo demo-down clean crd bench-gpu stage-gpu-wheels bench-gpu-rehearsal \
	bench-loader bench-operator

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup:  ## install Debian tools, uv and the locked Python environment (.venv)
	@tools/bootstrap.sh

test: setup testenv-build  ## run every tier but gpu: unit, cluster, e2e
	$(BIN)/pytest -m "not gpu"

test-unit: setup  ## unit tier only (no control plane)
	$(BIN)/pytest -m "not gpu and not cluster and not e2e"

test-cluster: setup testenv-build  ## cluster tier only
	$(BIN)/pytest -m cluster

lint: setup  ## ruff lint and format check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup  ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

crd: setup  ## regenerate the CRD (manifests/ and the chart's crds/) from the API models
	$(BIN)/python -m diffusion_operator.crd > manifests/crd.yaml
	cp manifests/crd.yaml helm/diffusion-operator/crds/diffusiontrainingjobs.yaml

testenv-build:  ## build (or find cached) etcd, kube-*, kubectl, kwok, helm, promtool
	@$(TESTENV)/build.sh >/dev/null

testenv-up: setup  ## start the local control plane; prints the kubeconfig path
	@$(TESTENV)/up.sh

testenv-down:  ## stop the local control plane (by recorded PIDs)
	@$(TESTENV)/down.sh

demo: setup  ## train the tiny job end to end on this machine (docs/local.md)
	@tools/demo.sh

demo-down:  ## stop what an interrupted demo left running (by recorded PIDs)
	@tools/demo.sh down

bench-gpu:  ## on a GPU machine: GPU tests, step bench (ours vs stock), loader, projection, to OUT
	tools/gpu/bench_gpu.sh $(ARGS)

stage-gpu-wheels:  ## download the wheels bench-gpu needs into .wheels/gpu (carry them along)
	tools/gpu/stage_wheels.sh

bench-gpu-rehearsal: setup  ## bench-gpu on CPU (--tiny) in a Python 3.12 env shaped like the GPU machine's
	tools/gpu/stage_wheels.sh
	PYTHON="$$(tools/gpu/rehearsal_env.sh)" tools/gpu/bench_gpu.sh --tiny $(ARGS)

bench-loader: setup  ## data path alone: samples/s per core, cores to feed 8 GPUs
	$(BIN)/python tools/bench/loader_bench.py $(ARGS)

bench-operator: setup testenv-build  ## operator at fleet scale: N jobs, both designs (docs/benchmarks.md)
	$(BIN)/python tools/bench/operator_scale.py $(ARGS)

clean:  ## remove the virtual environment and caches in the checkout
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Packaging
.PHONY: manifests chart-lint images
CHART := helm/diffusion-operator
IMAGE_REPOSITORY ?= ghcr.io/diffusion-operator
IMAGE_TAG ?= dev

manifests: setup testenv-build crd  ## render manifests/install.yaml, the plain alert rules and the chart's README from the chart
	$(BIN)/python tools/packaging/render_manifests.py --helm "$$($(TESTENV)/build.sh)/helm" \
		--out manifests/install.yaml
	$(BIN)/python tools/packaging/render_manifests.py --helm "$$($(TESTENV)/build.sh)/helm" \
		--alerts --out manifests/prometheus/alerts.yaml
	$(BIN)/python tools/packaging/chart_readme.py --out $(CHART)/README.md

chart-lint: setup testenv-build  ## helm lint --strict (both RBAC scopes), hadolint both Dockerfiles
	"$$($(TESTENV)/build.sh)/helm" lint --strict $(CHART)
	"$$($(TESTENV)/build.sh)/helm" lint --strict $(CHART) --set rbac.scope=cluster
	$(BIN)/hadolint --config .hadolint.yaml docker/operator.Dockerfile docker/trainer.Dockerfile

images: setup  ## build both images: Docker with the public bases, else podman with Debian-made bases
	IMAGE_REPOSITORY=$(IMAGE_REPOSITORY) IMAGE_TAG=$(IMAGE_TAG) tools/images/build.sh
