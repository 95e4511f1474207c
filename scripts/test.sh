#!/usr/bin/env bash
# Install everything into .venv and run the whole suite: lint, types, tests.
# Starts Redis and PostgreSQL on loopback if they are down and installs Debian's Chromium (the
# farm view's browser test) if it is missing; fails if a real part is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh dev
bash scripts/services.sh
bash scripts/chromium.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
