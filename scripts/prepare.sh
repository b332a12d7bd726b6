# Sourced by demo.sh and test.sh: go to the repository root, set up the
# environment (scripts/setup.sh), start the broker if none answers, and stop it
# on exit only if it was started here. MM_BROKER_ROLES=1 also makes the per-role
# users (scripts/broker.sh start --roles; docs/security.md).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
broker_state=$(bash scripts/broker.sh start ${MM_BROKER_ROLES:+--roles})
stop_started_broker() { if [ "$broker_state" = started ]; then bash scripts/broker.sh stop; fi; }
trap stop_started_broker EXIT
