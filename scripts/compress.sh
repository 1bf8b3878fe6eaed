#!/usr/bin/env bash
# The main job: one-button compression of the shared ResNet-20 to half its MACs on the shared
# CIFAR-10, sized for a 2-core CPU (about 10 minutes): a 30-trial Optuna search scored on 1,000
# held-out images, 1 finetune epoch. Extra flags pass through to `amc compress`.
# On a GPU, the full protocol: --device cuda --episodes 200 --eval-images 5000 --finetune-epochs 5
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
exec .venv/bin/amc compress ../shared/models/resnet20_dense.pt --budget macs=0.5 --method optuna \
  --episodes 30 --calib-images 1024 --eval-images 1000 --finetune-epochs 1 --out runs/resnet20-macs50 "$@"
