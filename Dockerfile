# syntax=docker/dockerfile:1
#
# blipq: the captioning API with its queue and a worker in one container.
#
#   docker build -t blipq .                                    # GPU (CUDA runtime + PyTorch)
#   docker build --build-arg FLAVOR=cpu -t blipq:cpu .         # small, CPU-only PyTorch
#   docker build --build-arg MODEL=Salesforce/blip-image-captioning-large -t blipq:large .   # weights baked in
#
# Both flavours share every instruction after the PyTorch base, so they cannot drift apart.

ARG FLAVOR=gpu
ARG CUDA_TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# -- the blipq wheel, built without any of its (large) dependencies ---------------------------
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir "build>=1.2" && python -m build --wheel --outdir /wheels .

# -- PyTorch bases ------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu-torch
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.5.1"

FROM ${CUDA_TORCH_IMAGE} AS gpu-torch

# -- the image ----------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM ${FLAVOR}-torch AS blipq
ARG MODEL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BLIPQ_HOST=0.0.0.0 \
    BLIPQ_PORT=8000 \
    BLIPQ_MODEL=${MODEL:-Salesforce/blip-image-captioning-large} \
    BLIPQ_CHECKPOINTS_DIR=/checkpoints \
    BLIPQ_QUEUE=sqlite:////data/blipq.db \
    HF_HUB_DISABLE_TELEMETRY=1

COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --gid 10001 blipq \
    && useradd --create-home --uid 10001 --gid 10001 blipq \
    && mkdir -p /checkpoints /data \
    && chown 10001:10001 /checkpoints /data

USER 10001:10001
WORKDIR /home/blipq
# With MODEL set, the weights are downloaded now and live in the image; without it, the first start
# downloads them into /checkpoints (mount a volume there to keep them).
RUN if [ -n "$MODEL" ]; then blipq download "$MODEL"; fi

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["blipq", "healthcheck"]
ENTRYPOINT ["blipq"]
CMD ["serve"]
