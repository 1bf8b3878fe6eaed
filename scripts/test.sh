#!/usr/bin/env bash
# The test command: installs into .venv if needed, lints, runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
