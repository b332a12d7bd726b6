#!/usr/bin/env bash
# broker.sh start|stop: run a local RabbitMQ for matchmaker.
# `start` starts rabbitmq-server only when none answers, creates the vhost
# "matchmaker" and the user "matchmaker" (guest stays loopback-only), and
# prints "started" or "running" so the caller knows whether to stop it.
set -euo pipefail
vhost=${MM_VHOST:-matchmaker}
user=${MM_USER:-matchmaker}
password=${MM_PASSWORD:-matchmaker}

case "${1:-}" in
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
  if ! rabbitmqctl -q list_users | cut -f1 | grep -qx "$user"; then
    rabbitmqctl -q add_user "$user" "$password" >/dev/null
  fi
  rabbitmqctl -q set_permissions -p "$vhost" "$user" ".*" ".*" ".*" >/dev/null
  echo "$state"
  ;;
stop)
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  ;;
*)
  echo "usage: scripts/broker.sh start|stop" >&2
  exit 2
  ;;
esac
