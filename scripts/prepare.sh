# Sourced by demo.sh and test.sh: go to the repository root, set up the
# environment (scripts/setup.sh), start the broker if none answers, and stop it
# on exit only if it was started here. MM_BROKER_ROLES=1 also makes the per-role
# users (scripts/broker.sh start --roles; docs/security.md). MM_WITH_POSTGRES=1
# (test.sh sets it; the demo runs on the embedded SQLite ledger) also starts the
# tests' private PostgreSQL (scripts/postgres.sh) and exports its URL as
# MM_TEST_PG_URL, stopped on exit likewise.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
broker_state=$(bash scripts/broker.sh start ${MM_BROKER_ROLES:+--roles})
pg_state=none
if [ "${MM_WITH_POSTGRES:-}" = 1 ]; then
  pg_state=$(bash scripts/postgres.sh start)
  MM_TEST_PG_URL=$(bash scripts/postgres.sh url)
  export MM_TEST_PG_URL
fi
stop_started_services() {
  if [ "$pg_state" = started ]; then bash scripts/postgres.sh stop; fi
  if [ "$broker_state" = started ]; then bash scripts/broker.sh stop; fi
}
trap stop_started_services EXIT
