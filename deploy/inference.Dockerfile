# syntax=docker/dockerfile:1
#
# The blipq inference image: `blipq worker` (consumes jobs from RabbitMQ) and `blipq build-engine`
# (the TensorRT vision encoder for this GPU). Build from the repository root:
#
#   docker build -f deploy/inference.Dockerfile -t blipq-inference .                           # NVIDIA GPU
#   docker build -f deploy/inference.Dockerfile --build-arg FLAVOR=cpu -t blipq-inference:cpu .  # no GPU
#
# GPU: torch 2.14 and torch-tensorrt 2.14 from PyPI, which bring CUDA 13's runtime libraries and
# TensorRT 11 as wheels; the host needs an NVIDIA driver for CUDA 13 (580 or newer) and the NVIDIA
# container toolkit. CPU: torch 2.14's CPU build, no TensorRT (the torch vision encoder runs).

ARG FLAVOR=gpu
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# The CUDA "base" flavour: the CUDA runtime itself comes with the torch wheels, so the larger
# "runtime" flavour would only add a second copy. The base image still brings the NVIDIA container
# settings and the driver-version requirement (an older driver is refused with a clear message).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
ARG TORCH_VERSION=2.14.1

# -- the blipq wheel ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
# blipq/ holds links to the side folders (blipq/gateway -> ../gateway, ...): each must come along.
COPY blipq ./blipq
COPY contract ./contract
COPY gateway ./gateway
COPY inference ./inference
COPY engine_build ./engine_build
RUN pip install --no-cache-dir "build==1.2.2.post1" && python -m build --wheel --outdir /wheels .

# -- the Python each flavour runs on ----------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-python
# Ubuntu 24.04's own Python 3.12; the base image's tag fixes the release, and its security updates
# are wanted, so the packages are not pinned to one build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.12 /usr/local/bin/python

FROM ${PYTHON_IMAGE} AS cpu-python

# -- a virtual environment per flavour (pip and the wheel stay in these stages) --------------------
FROM gpu-python AS gpu-venv
ARG TORCH_VERSION
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install --no-cache-dir "$(echo /wheels/*.whl)[inference,tensorrt]" "torch==${TORCH_VERSION}"

FROM cpu-python AS cpu-venv
ARG TORCH_VERSION
COPY --from=wheel /wheels /wheels
# PyTorch's CPU index has the CPU-only build (about 200 MB instead of several GB of CUDA wheels).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}+cpu" \
    && /opt/venv/bin/pip install --no-cache-dir "$(echo /wheels/*.whl)[inference]" "torch==${TORCH_VERSION}+cpu"

# hadolint ignore=DL3006
FROM ${FLAVOR}-venv AS venv

# -- the image --------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM ${FLAVOR}-python AS inference
COPY --from=venv /opt/venv /opt/venv
RUN groupadd --gid 10001 blipq \
    && useradd --create-home --uid 10001 --gid 10001 blipq \
    && mkdir -p /checkpoints \
    && chown 10001:10001 /checkpoints
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    BLIPQ_MODEL=Salesforce/blip-image-captioning-large \
    BLIPQ_CHECKPOINTS_DIR=/checkpoints \
    BLIPQ_METRICS_PORT=9100
USER 10001:10001
WORKDIR /home/blipq
# Weights and built engines: the first start downloads the weights here (mount a volume to keep them).
VOLUME ["/checkpoints"]
EXPOSE 9100
# Healthy once the model is loaded and the worker's metrics endpoint answers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 CMD ["blipq", "healthcheck", "--worker"]
ENTRYPOINT ["blipq"]
# BLIPQ_BROKER_URL must be set (amqp://user:pass@host:5672/).
CMD ["worker"]
