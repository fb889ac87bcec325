#!/usr/bin/env bash
# The main job: set up, train configs/cpu-small.yaml on the Python standard library (~11 minutes on
# 2 CPU cores), then extract and validate the model's quote-closing circuit.
#   bash scripts/main.sh                      # everything, into runs/cpu-small
#   bash scripts/main.sh --out runs/try --steps 100
# Arguments go to train.py; PRUNE_ARGS (environment) adds flags to prune_circuit.py.
# A second run into an --out that already holds a run is refused by train.py: add --resume to
# continue a stopped run, or --overwrite to train it again from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs/cpu-small
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--out" ] && out=${args[$((i + 1))]}
done
.venv/bin/python train.py --config configs/cpu-small.yaml --out "$out" "$@"
# shellcheck disable=SC2086
.venv/bin/python prune_circuit.py --checkpoint "$out" --task single_double_quote ${PRUNE_ARGS:-}
