#!/usr/bin/env bash
# Set up, then run the test suite, spread over the machine's cores (pytest-xdist, at most 8 workers).
# Extra arguments go to pytest (e.g. -k resume, -m 'not slow', tests/test_train.py); `-n 0` or
# `-p no:xdist` runs everything in this one process, for a debugger or print-debugging.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workers=(-n auto --maxprocesses=8 --dist worksteal)
for arg in "$@"; do
    [[ $arg == *no:xdist* ]] && workers=()
done
exec .venv/bin/python -m pytest -q ${workers[@]+"${workers[@]}"} "$@"
