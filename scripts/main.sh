#!/usr/bin/env bash
# The main job: set up, then train configs/cpu-small.yaml on the Python standard library
# (about 10 minutes on 2 CPU cores). Extra arguments go to train.py (e.g. --steps 20 --out runs/try).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python train.py --config configs/cpu-small.yaml "$@"
