# Two commands for a fresh machine:  make demo  (set up + the whole chain on the local stack, with a summary)
#                                     make test  (set up + lint + type-check + all tests)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup browser container-tools demo test lint bench local-up local-down local-reset local-status clean

# The container images are built and run with podman, which needs no daemon. As root on a machine without kernel
# overlay mounts, where crun and the default rlimits are refused (CI's machines), these settings make it work;
# your own CONTAINERS_CONF / CONTAINERS_STORAGE_CONF / BUILDAH_ISOLATION win. See README, "Container images".
ifeq ($(shell id -u),0)
export CONTAINERS_CONF ?= $(CURDIR)/local/podman/containers.conf
export CONTAINERS_STORAGE_CONF ?= $(CURDIR)/local/podman/storage.conf
export BUILDAH_ISOLATION ?= chroot
endif
# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not images"' to leave out the image builds.
PYTEST_ARGS ?=

setup: $(VENV)/.installed

# concrete-ml pins torch 2.3.1 (a large download): installed once, then reused until pyproject.toml changes.
# constraints.txt holds the exact tested versions, so pip resolves at once.
$(VENV)/.installed: pyproject.toml emulators/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e ".[dev]" -e ./emulators -c constraints.txt
	touch $@

demo: setup
	$(PY) -m local.lifecycle up
	eval "$$($(PY) -m local.lifecycle env)" && $(PY) -m examples.demo $$($(PY) -m local.lifecycle enclave-image)

# Benchmarks, not tests: they print tables, write bench/results/*.json and docs/benchmarks.md + .png.
bench: setup
	$(PY) bench/recipe.py
	$(PY) bench/recipe.py --datasets digits --recipes tuned --fhe-samples 8 --name variants \
	  --variant exact-rounding:rounding=exact --variant p_error-2^-40:p_error=9.094947017729282e-13 \
	  --variant p_error-0.01:p_error=0.01 --variant prune-50%:module__n_prune_neurons_percentage=0.5 \
	  --variant multiplier-0.25:module__n_hidden_neurons_multiplier=0.25 --variant accumulator-8:module__n_accum_bits=8 \
	  --variant w3a3:module__n_w_bits=3,module__n_a_bits=3
	$(PY) bench/recipe.py --datasets digits,digits_28x28,breast_cancer --tree-datasets breast_cancer \
	  --recipes reference,tuned,searched,tree-reference,tree-tuned,tree-searched --fhe-samples 8 --search-seconds 720 \
	  --name search
	$(PY) -m bench.budget --splits 10 --search-seconds 120
	$(PY) -m local.lifecycle up
	eval "$$($(PY) -m local.lifecycle env)" && $(PY) bench/workflow.py
	eval "$$($(PY) -m local.lifecycle env)" && $(PY) -m bench.scale
	$(PY) -m bench.enclave
	$(PY) -m bench.language_model
	$(PY) bench/report.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

# The audit report's test renders it in headless Chromium (Debian's package; root installs it, others are told how).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "headless Chromium is needed for the tests: sudo apt-get install chromium" >&2; exit 1; fi; }

# The image tests build with podman (Debian's package, with runc, fuse-overlayfs and debootstrap for the base).
container-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v fuse-overlayfs >/dev/null \
	  && command -v debootstrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    podman runc fuse-overlayfs debootstrap >/dev/null; \
	  else echo "the image tests need podman: sudo apt-get install podman runc fuse-overlayfs debootstrap" \
	    "(or run make test PYTEST_ARGS='-m \"not images\"')" >&2; exit 1; fi; }

# The verdict comes from the JUnit report too: pytest's exit status alone has been seen to read 0 after a failure.
test: lint browser $(if $(findstring not images,$(PYTEST_ARGS)),,container-tools)
	rm -f .test-results.xml
	$(PY) -m pytest --junitxml=.test-results.xml $(PYTEST_ARGS); status=$$?; $(PY) .ci/verdict.py .test-results.xml && exit $$status

local-up: setup
	$(PY) -m local.lifecycle up

local-down: setup
	$(PY) -m local.lifecycle down

local-reset: setup
	$(PY) -m local.lifecycle reset

local-status: setup
	$(PY) -m local.lifecycle status

clean: local-down
	rm -rf .local-stack
