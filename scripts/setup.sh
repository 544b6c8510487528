#!/usr/bin/env bash
# Create .venv with sslc (editable) and its dev tools. Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    # --system-site-packages: a torch the user already has (e.g. a CUDA build) is seen and never replaced.
    "$PYTHON" -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Pinned: on this project's machines 2.13.0 is the local CPU wheel; an unpinned torch pulls GBs of CUDA.
    .venv/bin/pip install --quiet "${SSLC_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet -e ".[dev]"
