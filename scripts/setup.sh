#!/usr/bin/env bash
# Create (or reuse) a local virtual environment in .venv and install the project into it.
# torch is installed FIRST and pinned to the CPU build (2.13.0): a later unpinned resolution
# would otherwise pull several GB of CUDA packages.
# Usage: bash scripts/setup.sh [extra ...]   e.g. `bash scripts/setup.sh dev` or `bash scripts/setup.sh dev franka`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
fi
extras=$(IFS=,; echo "$*")
target="."
[ -n "$extras" ] && target=".[${extras}]"
.venv/bin/python -m pip install -q -e "$target" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, pybullet, zarr, gymnasium; print('setup ok: torch', torch.__version__, '| zarr', zarr.__version__)"
