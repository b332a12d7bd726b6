#!/usr/bin/env bash
# postgres.sh start | stop | url: a private PostgreSQL for the tests (the ledger's
# PostgreSQL backend), never the system's cluster.
# `start` makes a cluster under MM_PG_DIR (default /tmp/mm-pg-<port>) with initdb when
# missing, runs it on 127.0.0.1:MM_PG_PORT (default 55432) with its socket in that
# directory, makes the role and database "mm_test" (password "mm_test"; a superuser of
# this throwaway cluster, so the tests can make schemas and read-only roles), and prints
# "started" or "running" so the caller knows whether to stop it. `url` prints its URL.
# As root the server runs as the "postgres" user (PostgreSQL refuses root).
set -euo pipefail
port=${MM_PG_PORT:-55432}
dir=${MM_PG_DIR:-/tmp/mm-pg-$port}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || bin=$(dirname "$(command -v initdb || echo /nonexistent/initdb)")
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
ready() { "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" >/dev/null 2>&1; }

case "${1:-}" in
start)
  [ -x "$bin/initdb" ] || { echo "postgres.sh: PostgreSQL is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
  if ready; then
    echo running
    exit 0
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  chmod 700 "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A peer --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir" start >/dev/null \
    || { tail -20 "$dir/server.log" >&2; exit 1; }
  psql() { as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qAtX "$@"; }
  if [ "$(psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'mm_test'")" != 1 ]; then
    psql -c "CREATE ROLE mm_test LOGIN SUPERUSER PASSWORD 'mm_test'" >/dev/null
  fi
  if [ "$(psql -c "SELECT 1 FROM pg_database WHERE datname = 'mm_test'")" != 1 ]; then
    psql -c "CREATE DATABASE mm_test OWNER mm_test" >/dev/null
  fi
  echo started
  ;;
stop)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  ;;
url)
  echo "postgresql://mm_test:mm_test@127.0.0.1:$port/mm_test"
  ;;
*)
  echo "usage: scripts/postgres.sh start | stop | url" >&2
  exit 2
  ;;
esac
