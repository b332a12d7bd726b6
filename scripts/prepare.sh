# Sourced by demo.sh and test.sh: go to the repository root, set up the
# environment (scripts/setup.sh), start the broker if none answers, and stop it
# on exit only if it was started here.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
broker_state=$(bash scripts/broker.sh start)
stop_started_broker() { if [ "$broker_state" = started ]; then bash scripts/broker.sh stop; fi; }
trap stop_started_broker EXIT
