#!/usr/bin/env bash
# Create .venv (Python ≥ 3.11) and install mlwitness with its development extras.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "mlwitness needs Python >= 3.11"'
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import mlwitness, tritonclient.grpc, skl2onnx, pytest' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch .venv/.installed
fi
echo "setup: $(.venv/bin/mlwitness --version) in .venv"
