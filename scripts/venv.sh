#!/usr/bin/env bash
# Create .venv if missing and install the project into it (editable) with a dependency group
# of pyproject.toml ($1): `samples` (the demo) or `dev` (tests, lint, benchmarks), e.g.
# `bash scripts/venv.sh dev`. Used by demo.sh and test.sh. Dependency groups need pip >= 25.1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e . --group "$1"
