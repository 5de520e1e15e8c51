# workbench image: `workbench run` (the default command) and `serve` (SageMaker's hosting contract on
# port 8080), with the pins of requirements.lock.
#   docker build -t workbench .                                   # Debian bookworm, torch from PyPI
#   docker run --gpus all -v "$PWD/artifacts:/app/artifacts" workbench run -p parameters/default.yaml -p parameters/gpu.yaml
#   docker run -p 8080:8080 -v "$PWD/model:/opt/ml/model:ro" workbench serve
# The default base is plain Debian: PyPI's Linux torch wheel carries its own CUDA libraries (the
# nvidia-* wheels it depends on), so the image trains on a GPU with only the host's NVIDIA driver
# (`--gpus all`) and needs no CUDA base image. --build-arg
# TORCH_INDEX=https://download.pytorch.org/whl/cpu makes a CPU-only image, much smaller.
# Other bases: --build-arg BASE_IMAGE=... with python3.11 in its archive: Debian 12 bookworm (from
# main, 3.11.2) or Ubuntu 22.04 (python3.11 from the deadsnakes PPA, see below). `make image` passes
# both arguments. Every pin of requirements.lock must accept the base's Python
# (tests/test_image.py checks the BASE_PYTHONS below against the lock): pip refuses a
# Requires-Python the interpreter misses.
# BASE_PYTHONS: bookworm=3.11.2 ubuntu22.04=3.11.0rc1
# On Ubuntu 3.11.0rc1 is not enough: torch 2.13 cannot build an optimizer there (torch._dynamo calls
# sys.get_int_max_str_digits, new in 3.11.0 final), so on Ubuntu python3.11 comes from the deadsnakes
# PPA, a final 3.11; the lock is still checked against the rc, the older of the two.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://pypi.org/simple
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Package names that exist on both Ubuntu 22.04 and Debian bookworm. libquadmath0: MXNet's
# libmxnet.so links it (import fails with `OSError: libquadmath.so.0` without it); libgomp1: torch's
# and MXNet's OpenMP; ca-certificates: HTTPS to S3 and the registry from a bare base.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 libquadmath0 \
    && . /etc/os-release \
    && if [ "$ID" = ubuntu ]; then \
        apt-get install -y --no-install-recommends gpg-agent software-properties-common \
        && add-apt-repository -y ppa:deadsnakes/ppa \
        && apt-get update; \
    fi \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /app
COPY requirements.lock pyproject.toml ./
# The build of the locked torch version from TORCH_INDEX first (PyPI's, with CUDA, by default); the lock's
# `torch==2.13.0` accepts it, so the second install keeps it. Then what the package needs when it
# runs (pyproject's dependencies, the postgres extra, and the dask extra so that the image also serves
# as a Dask cluster's worker) at the lock's pins; the lock's test, lint,
# notebook-editing and benchmark tools stay out of the image.
RUN grep '^torch==' requirements.lock > /tmp/torch.txt \
    && pip install --requirement /tmp/torch.txt --index-url "${TORCH_INDEX}" \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + x['postgres'] + x['dask']))" > /tmp/runtime.txt \
    && pip install --constraint requirements.lock --requirement /tmp/runtime.txt

COPY README.md ./
COPY workbench ./workbench
COPY notebooks ./notebooks
COPY parameters ./parameters
COPY deploy/entrypoint.sh deploy/nightly.sh ./deploy/
RUN pip install --no-deps --no-build-isolation . \
    && workbench kernel \
    && useradd --create-home --uid 1000 workbench \
    && mkdir -p /app/artifacts && chown -R 1000 /app

USER 1000
# `serve` listens here (SageMaker sends /ping and /invocations to 8080).
EXPOSE 8080
# `docker run IMAGE` runs the pipeline; `docker run IMAGE serve` (how SageMaker starts a hosting
# container) serves; any other arguments go to the `workbench` command as they are.
ENTRYPOINT ["/bin/sh", "/app/deploy/entrypoint.sh"]
CMD ["run"]
