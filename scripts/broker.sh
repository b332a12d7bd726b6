#!/usr/bin/env bash
# broker.sh start [--roles] [--secrets DIR] [--no-dev-user] | stop: run a local RabbitMQ for
# matchmaker.
# `start` starts rabbitmq-server only when none answers, creates the vhost "matchmaker" and
# prints "started" or "running" so the caller knows whether to stop it. By default it also
# makes the development user "matchmaker" (password "matchmaker", every right in the vhost;
# guest stays loopback-only), which the tests, the demo and the benchmarks use.
# --roles also makes the least-privilege users of docs/security.md (mm-scheduler, mm-admin,
# mm-client and, with MM_WORKERS="w1 w2", mm-worker-<name>), the queues and exchanges, with
# random passwords in DIR/<user>.password (0600; DIR defaults to state/secrets): see
# `python -m matchmaker users --help`. Passwords reach rabbitmqctl on stdin only.
# --no-dev-user leaves the development user out (and deletes its rights on the vhost).
# It enables rabbitmq_event_exchange (consumer events: a killed worker is found by the broker,
# matchmaker/liveness.py) and lets the development user read amq.rabbitmq.event in "/".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vhost=${MM_VHOST:-matchmaker}
user=${MM_USER:-matchmaker}
password=${MM_PASSWORD:-matchmaker}
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3

action=${1:-}
shift || true
roles=0
dev_user=1
secrets=state/secrets
while [ $# -gt 0 ]; do
  case "$1" in
  --roles) roles=1 ;;
  --no-dev-user) dev_user=0 ;;
  --secrets) secrets=${2:?--secrets needs a directory}; shift ;;
  *) echo "broker.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

dev_definitions() {
  # The development user as definitions on stdin (never a password argument); its
  # password hash is RabbitMQ's rabbit_password_hashing_sha256.
  "$python" - "$vhost" "$user" <<'PY'
import json, os, sys
sys.path.insert(0, os.getcwd())
from matchmaker.identity import definitions, scheduler_role
vhost, user = sys.argv[1], sys.argv[2]
print(json.dumps(definitions(vhost, [(scheduler_role(user), os.environ["MM_DEV_PASSWORD"])])))
PY
}

case "$action" in
start)
  if rabbitmqctl -q status >/dev/null 2>&1; then
    state=running
  else
    # A classic queue flushes its index journal to segment files when it holds this many
    # entries; RabbitMQ's 32768 made a flush stall deliveries for 30-60 ms at 2,000
    # messages/s (README, "Decisions").
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-rabbit queue_index_max_journal_entries 2048" \
      rabbitmq-server -detached >/dev/null 2>&1
    for _ in $(seq 1 60); do
      rabbitmqctl -q status >/dev/null 2>&1 && break
      sleep 1
    done
    rabbitmqctl -q await_startup >/dev/null
    state=started
  fi
  rabbitmqctl -q list_vhosts | grep -qx "$vhost" || rabbitmqctl -q add_vhost "$vhost" >/dev/null
  rabbitmq-plugins -q is_enabled rabbitmq_event_exchange >/dev/null 2>&1 ||
    rabbitmq-plugins -q enable rabbitmq_event_exchange >/dev/null ||
    echo "broker.sh: rabbitmq_event_exchange not enabled: Serf alone finds failed workers" >&2
  cd "$root"
  if [ "$dev_user" = 1 ]; then
    if ! rabbitmqctl -q list_users | cut -f1 | grep -qx "$user"; then
      MM_DEV_PASSWORD=$password dev_definitions | rabbitmqctl -q import_definitions >/dev/null
    fi
    rabbitmqctl -q set_permissions -p "$vhost" "$user" ".*" ".*" ".*" >/dev/null
    # identity.events_role: a private queue bound to amq.rabbitmq.event, nothing else in "/"
    rabbitmqctl -q set_permissions -p / "$user" '^amq\.gen-.*' '^amq\.gen-.*' \
      '^(amq\.gen-.*|amq\.rabbitmq\.event)$' >/dev/null
  else
    rabbitmqctl -q clear_permissions -p "$vhost" "$user" >/dev/null 2>&1 || true
    rabbitmqctl -q clear_permissions -p / "$user" >/dev/null 2>&1 || true
  fi
  if [ "$roles" = 1 ]; then
    workers=()
    for name in ${MM_WORKERS:-}; do workers+=(--worker "$name"); done
    "$python" -m matchmaker users setup --vhost "$vhost" --secrets "$secrets" "${workers[@]}" >&2
  fi
  echo "$state"
  ;;
stop)
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  ;;
*)
  echo "usage: scripts/broker.sh start [--roles] [--secrets DIR] [--no-dev-user] | stop" >&2
  exit 2
  ;;
esac
