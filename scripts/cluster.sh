#!/usr/bin/env bash
# cluster.sh start|stop|url [--dir DIR] [--size 3]: a private RabbitMQ cluster for tests.
# `start` starts three nodes (own node names, ports, data under DIR, default
# /tmp/mm-rabbit-cluster, one Erlang cookie), joins them, makes the vhost and user
# "mm-cluster" and prints the nodes' URLs, comma-separated (what --broker-url takes;
# with MM_QUEUE_TYPE=quorum). `stop` stops them. The shared broker is not touched.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
cd "$root"
exec "$python" -m benchmarks.rabbit_cluster "$@"
