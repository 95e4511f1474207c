#!/usr/bin/env bash
# Install the project into .venv and run the inventory demo on the embedded default
# (in-memory hub, SQLite; no services needed). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh samples
exec .venv/bin/python -m samples.inventory "$@"
