#!/usr/bin/env bash
# Here, before a GPU is lent: put into .whl/ (git-ignored, carried with the working tree: 64 MiB at most) the
# wheels the lent machine lacks (its image has torch, transformers, numpy, Pillow, pytest, httpx, anyio, rich,
# typer and prometheus-client) at the versions this checkout's .venv runs, and blipq's own wheel built from
# this checkout. benchmarks/gpu/run.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
NEEDED="pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection typing-extensions
fastapi starlette annotated-doc fastapi-offline uvicorn httptools python-multipart limits deprecated wrapt
aio-pika aiormq pamqp pika pybase64"
pins=$(python - "$NEEDED" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1].split()))
PY
)
rm -rf .whl && mkdir .whl
# The lent machine runs CPython 3.12 on x86-64.
# shellcheck disable=SC2086
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins 2>&1 | grep -v "^WARNING: Location" || true
python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir .whl . 2>&1 | grep -v "^WARNING: Location" || true
ls .whl
du -sh .whl
