#!/usr/bin/env bash
# Set up, start the broker if none runs, run the whole system on a demo
# workload (scripts/demo.py), stop what was started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
.venv/bin/python scripts/demo.py "$@"
