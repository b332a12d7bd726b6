#!/usr/bin/env bash
# Idempotent setup: system packages, the virtual environment, and (with
# --broker) a running RabbitMQ with matchmaker's own vhost and user.
# Sourced by demo.sh and test.sh; a second run only checks and is fast.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

need=()
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v serf >/dev/null || need+=(serf)
command -v thrift >/dev/null || need+=(thrift-compiler)
command -v openssl >/dev/null || need+=(openssl)  # matchmaker.tls makes the test certificates
command -v chromium >/dev/null || need+=(chromium)  # the dashboard tests drive it headless
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # the ledger's tests
command -v python3.11 >/dev/null || command -v python3 >/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The package's postinst may try to start the service; we start it ourselves.
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

py=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $py"
  "$py" -m venv .venv || { apt-get install -y -qq python3-venv >/dev/null && "$py" -m venv .venv; }
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (log: .venv/pip.log)"
  .venv/bin/pip install -q --upgrade pip >.venv/pip.log 2>&1
  .venv/bin/pip uninstall -y -q matchmaker >>.venv/pip.log 2>&1 || true  # the old name
  .venv/bin/pip install -e ".[dev]" >>.venv/pip.log 2>&1 || { tail -30 .venv/pip.log; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
