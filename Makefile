# `make demo` and `make test` each set up the environment first (once; later calls reuse it).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAB_ARGS ?=  # extra JupyterLab options for `make lab`, e.g. --no-browser --port=8899
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup demo test lint lab lock clean postgres chromium image-tools

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/workbench kernel
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/workbench run

test: setup lint postgres chromium image-tools
	$(BIN)/python -m pytest tests --nbval-lax notebooks

# The tests start their own throwaway PostgreSQL server; they need its binaries.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  { echo "the tests need PostgreSQL's server binaries: install the postgresql package" >&2; exit 1; }

# The web app's browser tests drive Debian's chromium through Playwright; no browser is downloaded.
chromium:
	@command -v chromium >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "the browser tests need Debian's chromium: install the chromium package" >&2; exit 1; }

# tests/test_image.py builds the image with buildah on a Debian bookworm base made with debootstrap,
# and runs it (the pipeline, serve).
image-tools:
	@{ command -v buildah && { command -v debootstrap || test -x /usr/sbin/debootstrap; }; } >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; } || \
	  { echo "the image tests need buildah and debootstrap: install those packages" >&2; exit 1; }

lint: setup
	$(BIN)/ruff check workbench tests benchmarks
	$(BIN)/ruff format --check workbench tests benchmarks

# JupyterLab refuses to start as root unless told; containers and cloud notebooks often run as root.
lab: setup
	$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS) notebooks

# The container image (see the Dockerfile). Empty variables keep the Dockerfile's defaults (Debian
# bookworm, torch from PyPI with its CUDA libraries):
# `make image BASE_IMAGE=ubuntu:22.04 TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
# buildah builds without a daemon (chroot isolation: no user namespaces or OCI runtime needed);
# without it, docker or podman. IMAGE_BUILD_OPTS go to the builder as they are (e.g. --volume).
IMAGE ?= workbench
BASE_IMAGE ?=
TORCH_INDEX ?=
IMAGE_BUILD_OPTS ?=
IMAGE_BUILD_ARGS = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(if $(TORCH_INDEX),--build-arg TORCH_INDEX=$(TORCH_INDEX))

.PHONY: image
image:
	@if command -v buildah >/dev/null; then \
	  set -x; buildah bud --isolation $${BUILDAH_ISOLATION:-chroot} --layers $(IMAGE_BUILD_ARGS) $(IMAGE_BUILD_OPTS) -t $(IMAGE) .; \
	elif docker info >/dev/null 2>&1; then \
	  set -x; docker build $(IMAGE_BUILD_ARGS) $(IMAGE_BUILD_OPTS) -t $(IMAGE) .; \
	elif command -v podman >/dev/null; then \
	  set -x; podman build --layers $(IMAGE_BUILD_ARGS) $(IMAGE_BUILD_OPTS) -t $(IMAGE) .; \
	else echo "make image needs buildah, a running Docker engine or podman" >&2; exit 1; fi

# Re-resolve every pin from pyproject.toml in a scratch environment.
lock:
	rm -rf build/lock && $(PYTHON) -m venv build/lock
	build/lock/bin/pip install --quiet "torch==2.13.0" && build/lock/bin/pip install --quiet ".[dev,bench,dask]"
	{ echo "# Every pin, resolved from pyproject.toml by \`make lock\`; environment.yml, the Dockerfile and the Makefile install from it."; \
	  build/lock/bin/pip freeze --exclude workbench | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; } > requirements.lock

clean:
	rm -rf $(VENV) build artifacts
