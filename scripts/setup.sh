#!/usr/bin/env bash
# Create (or reuse) a local virtual environment in .venv and install the project into it.
# torch is installed FIRST and pinned to the CPU build (2.13.0): a later unpinned resolution
# would otherwise pull several GB of CUDA packages.
# System packages the extras need (Debian): `franka` -> libusb-1.0-0 (pyrealsense2 loads it at import),
# `dev` -> chromium (tests/test_inspect.py renders the HTML report headless). Installed with apt-get when
# run as root and missing; otherwise the command that installs them is printed.
# Any failed step (apt-get, pip, the final import check) stops the script with a non-zero exit status.
# Extras: dev (pytest, ruff), franka (the real cell's libraries), ray (the actor-learner loop, `loop.workers=N`),
# viz (rerun-sdk: `python -m data.inspect --rerun`,
# `loop.viz=rerun`; no system package needed).
# Usage: bash scripts/setup.sh [extra ...]   e.g. `bash scripts/setup.sh dev` or `bash scripts/setup.sh dev franka viz ray`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

die() {
    echo "setup.sh: ERROR: $*" >&2
    exit 1
}

# ------------------------------------------------------------------ system packages
extras=$(IFS=,; echo "$*")
has_extra() { [[ ",${extras}," == *",$1,"* ]]; }

deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()    # Debian packages to install
why=()        # what each one is for (same order)
if has_extra franka && ! deb_installed libusb-1.0-0; then
    missing+=(libusb-1.0-0)
    why+=("pyrealsense2 (the franka extra) loads libusb-1.0.so.0 at import: without it tests/test_realsense_camera.py and tests/test_franka_robot.py fail and robot=franka cannot open the camera")
fi
if has_extra dev && ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)
    why+=("tests/test_inspect.py renders the HTML report in headless chromium: without it that test is skipped (and fails the run when CI is set)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing system packages: ${missing[*]}"
        apt-get update -q || die "apt-get update failed (needed to install: ${missing[*]})"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
        missing=()
    else
        for i in "${!missing[@]}"; do
            echo "setup.sh: WARNING: the Debian package ${missing[$i]} is not installed: ${why[$i]}" >&2
        done
        if [ "$(id -u)" -ne 0 ]; then reason="not running as root"; else reason="no apt-get on this system"; fi
        echo "setup.sh: ${reason}, so not installing it; install with:" >&2
        echo "    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q ${missing[*]}" >&2
    fi
fi

# ------------------------------------------------------------------ Python packages
# pip with its noisy "... is ignored" lines (configured package locations that do not exist) filtered out.
# With pipefail the pipeline's status is pip's (the filter always succeeds); a failure names the step.
_filter_pip() { grep -v "is ignored" || true; }
pip_step() {
    local what=$1 rc=0
    shift
    .venv/bin/python -m pip "$@" 2>&1 | _filter_pip || rc=$?
    [ "$rc" -eq 0 ] || die "pip failed (exit status $rc) while ${what}: pip $*"
}

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || die "cannot create .venv with $PY"
fi
pip_step "upgrading pip" install -q --upgrade pip
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    pip_step "installing torch 2.13.0 (CPU) first" install -q torch==2.13.0
fi
target="."
[ -n "$extras" ] && target=".[${extras}]"
pip_step "installing the project ($target)" install -q -e "$target"
.venv/bin/python -c "import torch, pybullet, zarr, gymnasium; print('setup ok: torch', torch.__version__, '| zarr', zarr.__version__)" \
    || die "the installed environment does not import (torch, pybullet, zarr, gymnasium)"
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: WARNING: still missing system packages: ${missing[*]} (see above)" >&2
fi
