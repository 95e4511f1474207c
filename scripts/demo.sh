#!/usr/bin/env bash
# Install the project into .venv and run the inventory demo on the embedded default
# (in-memory hub, SQLite; no services needed). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[samples]'
exec .venv/bin/python -m samples.inventory "$@"
