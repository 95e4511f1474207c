#!/usr/bin/env bash
# Create .venv if missing and install the project into it with the extras given ($1),
# e.g. `bash scripts/venv.sh dev`. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$1]"
