#!/usr/bin/env bash
# Create .venv and install sparse_gpt into it (idempotent; re-installs when pyproject.toml changes).
# An existing torch is kept; otherwise torch 2.13.0 is installed first (a CPU build where one lies on
# this machine's disk, as on our CI machines).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.sparse_gpt-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
