#!/usr/bin/env bash
# Create .venv-extras (git-ignored): the optional benchmark extras (the [detection] extra of
# pyproject.toml: torchmetrics, pycocotools, ultralytics, yolov5) in a venv of their own that sees
# .venv's packages (torch, the project) through a .pth file, so that .venv itself never holds them.
# ultralytics (AGPL-3.0) and yolov5 (GPL-3.0) are benchmark extras only: the amc package never
# imports them. setuptools<81 because yolov5 imports pkg_resources.
# Use: scripts/setup-extras.sh; then PYTHONPATH=. .venv-extras/bin/python benchmarks/task_coverage.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup-venv.sh
PY=${PYTHON:-python3}
if [ ! -x .venv-extras/bin/python ]; then
  "$PY" -m venv .venv-extras
fi
main_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
extras_site=$(.venv-extras/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$main_site" > "$extras_site/_main_venv.pth"
extras=$(.venv/bin/python - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["optional-dependencies"]["detection"]))
PY
)
# shellcheck disable=SC2086  # one word per requirement
.venv-extras/bin/python -m pip install -q $extras
.venv-extras/bin/python -c 'import torch, amc, ultralytics, yolov5; print("extras ready: torch", torch.__version__)'
