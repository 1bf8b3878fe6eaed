#!/usr/bin/env bash
# Create .venv (git-ignored) with PyTorch and the project installed in editable mode, once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.amc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned to the builds this machine keeps on disk; pyproject.toml only asks torch>=2.4
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
    || .venv/bin/python -m pip install -q "torch>=2.4" torchvision
  # setuptools warns about editable installs beside a folder named like the package: not the user's concern
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
