#!/usr/bin/env bash
# Create a venv with sslc (editable) and its dev tools. Safe to rerun: it only installs what is missing.
#   scripts/setup.sh            .venv for using sslc (`make demo`): the system's packages stay visible, so a torch
#                               you already have (e.g. a CUDA build) is seen and never replaced.
#   scripts/setup.sh --isolated .venv-test for the tests (`make test`): no system site packages, only torch and
#                               what pyproject.toml declares, so the tests prove the declarations are complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case "${1:-}" in
    "") VENV=.venv; VENV_FLAGS=--system-site-packages ;;
    --isolated) VENV=.venv-test; VENV_FLAGS= ;;
    *) echo "usage: scripts/setup.sh [--isolated]" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv $VENV_FLAGS "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # Pinned: on this project's machines 2.13.0 is the local CPU wheel; an unpinned torch pulls GBs of CUDA.
    "$VENV/bin/pip" install --quiet "${SSLC_TORCH:-torch==2.13.0}"
fi
"$VENV/bin/pip" install --quiet -e ".[dev]"
