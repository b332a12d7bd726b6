#!/usr/bin/env bash
# Set up, start the broker if none runs and the tests' PostgreSQL, run ruff, mypy
# and pytest, stop what was started.
set -euo pipefail
export MM_WITH_POSTGRES=1
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
