# workbench runner image: `workbench run` with the pins of requirements.lock.
#   docker build -t workbench .                                   # CUDA 12.6 base, CUDA torch
#   docker run --gpus all -v "$PWD/artifacts:/app/artifacts" workbench run -p parameters/default.yaml -p parameters/gpu.yaml
# Other bases: --build-arg BASE_IMAGE=... (any Ubuntu 22.04 image; python3.11 comes from its universe
# archive) and --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only image.
ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /app
COPY requirements.lock ./
# The CUDA build of the locked torch version first; the lock's `torch==2.13.0` accepts it.
RUN grep '^torch==' requirements.lock > /tmp/torch.txt \
    && pip install --requirement /tmp/torch.txt --index-url "${TORCH_INDEX}" \
    && pip install --requirement requirements.lock

COPY pyproject.toml README.md ./
COPY workbench ./workbench
COPY notebooks ./notebooks
COPY parameters ./parameters
RUN pip install --no-deps --no-build-isolation . \
    && workbench kernel \
    && useradd --create-home --uid 1000 workbench \
    && mkdir -p /app/artifacts && chown -R 1000 /app

USER 1000
ENTRYPOINT ["workbench"]
CMD ["run"]
