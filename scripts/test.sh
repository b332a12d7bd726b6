#!/usr/bin/env bash
# Set up, start the broker if none runs, run ruff, mypy and pytest, stop what
# was started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
