# syntax=docker/dockerfile:1
#
# The blipq gateway: the HTTP API, its SQLite store and the RabbitMQ publisher. No torch, no model,
# no GPU: jobs go to `blipq worker`s through RabbitMQ. Build from the repository root:
#
#   docker build -f deploy/gateway.Dockerfile -t blipq-gateway .
#   docker run -p 8000:8000 -e BLIPQ_BROKER_URL=amqp://user:pass@rabbit:5672/ blipq-gateway

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

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

# -- a virtual environment with blipq[gateway] (the build tools stay in this stage) -----------------
FROM ${PYTHON_IMAGE} AS venv
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "$(echo /wheels/*.whl)[gateway]"

# -- the image --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway
COPY --from=venv /opt/venv /opt/venv
RUN groupadd --gid 10001 blipq \
    && useradd --create-home --uid 10001 --gid 10001 blipq \
    && mkdir -p /data \
    && chown 10001:10001 /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BLIPQ_HOST=0.0.0.0 \
    BLIPQ_PORT=8000 \
    BLIPQ_STORE=sqlite:////data/blipq.db
USER 10001:10001
WORKDIR /home/blipq
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["blipq", "healthcheck"]
ENTRYPOINT ["blipq"]
# BLIPQ_BROKER_URL must be set: without a broker, `serve` would run the model in-process, and this
# image has none (it says so in one line and exits 1).
CMD ["serve"]
