# Sourced by scripts/serve and scripts/test: create ./.venv (once), install the right PyTorch build and
# blipq with the extras given as arguments, and activate it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH_VERSION=2.13.0
[ -d .venv ] || python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
# PyTorch first, so that resolving blipq (torch>=2.4) keeps it. On Linux, PyPI's torch is the CUDA
# build (about twenty nvidia-* packages, several GB): right where an NVIDIA driver answers. Elsewhere
# take the CPU build, the version "+cpu" on PyTorch's CPU index (or from a local find-links folder
# that already holds it).
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        python -m pip install --quiet "torch==${TORCH_VERSION}"
    else
        python -m pip install --quiet "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
            || python -m pip install --quiet "torch==${TORCH_VERSION}+cpu" \
                --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi
python -m pip install --quiet -e ".[$1]"
