#!/usr/bin/env bash
# Set up, start the broker if none runs, run ruff, mypy and pytest, stop what
# was started.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
state=$(bash scripts/broker.sh start)
cleanup() { if [ "$state" = started ]; then bash scripts/broker.sh stop; fi; }
trap cleanup EXIT
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
