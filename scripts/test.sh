#!/usr/bin/env bash
# The test command (README, CI): set up everything the tests need on a fresh machine,
# check generated code and lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
bash scripts/setup_upstream_venv.sh          # third-party MLServer for forwarding tests
if [ -f scripts/install_kubectl.sh ]; then bash scripts/install_kubectl.sh; fi
bash scripts/install_chromium.sh             # headless browser for the report tests
python scripts/gen_protos.py --check
ruff check src tests bench examples scripts fuzz
mypy src
python -m pytest -q "$@"
