#!/usr/bin/env bash
# Train variants of configs/cpu-small.yaml side by side on a GPU machine and measure each one's
# validation loss, quote-task loss/accuracy and (time allowing) circuit size. See
# bench/sweep_cpu_small.py. Environment:
#   RESULTS_DIR  where sweep_cpu_small.json/.txt and the logs go (default bench/results)
#   DEVICE       cuda (default) or cpu (smoke test of the script)
#   BUDGET_S     wall seconds before stragglers are killed (default 190; then up to 30 s to score stopped runs)
#   STEPS        override every variant's steps (smoke tests)
#   ONLY         comma-separated variant names (default all)
#   PRUNE        0 to skip the circuit-size stage
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
RESULTS_DIR=${RESULTS_DIR:-bench/results}
mkdir -p "$RESULTS_DIR"
args=(--device "${DEVICE:-cuda}" --budget "${BUDGET_S:-190}" --results "$RESULTS_DIR")
[ -n "${STEPS:-}" ] && args+=(--steps "$STEPS")
[ -n "${ONLY:-}" ] && args+=(--only "$ONLY")
[ "${PRUNE:-1}" = 0 ] && args+=(--no-prune)
export PYTHONUNBUFFERED=1
"$PY" -u bench/sweep_cpu_small.py "${args[@]}" 2>&1 | tee "$RESULTS_DIR/sweep_cpu_small.log"
rc=${PIPESTATUS[0]}
# The per-variant logs, in one file (the results folder comes back as a handful of files).
for f in runs/sweep/*.log; do [ -f "$f" ] && { echo "=== $f"; tail -n 40 "$f"; }; done > "$RESULTS_DIR/sweep_cpu_small_logs.txt" 2>/dev/null
exit $rc
