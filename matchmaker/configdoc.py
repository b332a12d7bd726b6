"""The configuration reference, generated from ``Config``: ``docs/configuration.md``.

``python -m matchmaker.configdoc > docs/configuration.md`` writes it; a test checks that
every field of ``Config`` has a description here and that the file is current.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from matchmaker.config import Config

DESCRIPTIONS: dict[str, str] = {
    "broker_url": "AMQP URL of the broker: `amqp://` or `amqps://` (TLS), user, host, port "
    "and vhost. For a cluster, the URLs of its nodes, comma-separated (or a TOML list): the "
    "process tries them in turn and, when its node dies, reconnects to another.",
    "broker_ca": "PEM file of the CA that signed the broker's certificate, for `amqps://` "
    "(empty: the system trust store); the certificate must also match the URL's host.",
    "broker_cert": "PEM client certificate for mutual TLS with the broker (`amqps://` only).",
    "broker_key": "PEM private key of `broker_cert` (empty: the key is in that file).",
    "broker_password_file": "File (0600) holding the password of the broker URL's user, so "
    "that no password stands in a URL or on a command line.",
    "authenticated_senders": "Refuse messages without an AMQP `user_id` (RabbitMQ checks it "
    "against the sender's login): the sender is a request's owner and a result's worker.",
    "admin_users": "Broker users that may cancel anyone's task and drain workers.",
    "trusted_users": "Broker users whose messages count for any owner and any worker (a "
    "single-user development setup; empty in production).",
    "serf_rpc": "RPC address (host:port) of the local Serf agent the scheduler reads the "
    "inventory from.",
    "liveness_vhost": "Vhost where the broker's event exchange plugin "
    "(`rabbitmq_event_exchange`) publishes `amq.rabbitmq.event`: a worker whose queue loses "
    "its consumer (its connection dropped) has its tasks put back at once, and one alive in "
    "Serf gets no dispatches until it consumes. Empty turns it off (Serf alone finds "
    "failures); without the plugin or the right to read the exchange it logs one warning and "
    "stays off.",
    "serf_auth_key": "The Serf agent's RPC auth key.",
    "serf_auth_key_file": "File (0600) holding the Serf agent's RPC auth key (make one with "
    "`python -m membership keygen`).",
    "insecure": "Run without Serf gossip encryption and RPC auth (a scheduler refuses to start "
    "without an auth key otherwise).",
    "state_dir": "Directory of the scheduler's state (the ledger, unless `ledger_url` "
    "names one elsewhere).",
    "ledger_url": "Where the ledger is: `sqlite:///PATH` (embedded, this host only) or "
    "`postgresql://USER@HOST:PORT/DB` (shared by a standby on another host and the CLI "
    "anywhere; the password from `PGPASSFILE` or the URL). Empty: `<state_dir>/ledger.sqlite`.",
    "ledger_retention": "Seconds a finished task (and its history) stays in the ledger before "
    "the scheduler prunes it, in small batches; 0 keeps every task for ever.",
    "pipeline_depth": "Dispatches a worker may hold beyond its slots (0-64): it runs at most "
    "its slots at once and starts the next it holds the moment one ends, without a round "
    "trip; a task held so is committed to that worker (benchmarks/README.md measures it).",
    "round_interval": "The longest a batch of work waits for its turn (intake, one commit and a "
    "round), in seconds. Rounds are event-driven: work that arrives while the loop is idle is "
    "placed at once, and only when it arrives faster than turns complete does the loop batch, "
    "with a window that grows with the load up to this value.",
    "batch_window": "How long the loop batches under load, as a multiple of the last turn's "
    "cost (0-100, capped at `round_interval`). The window grows with the deliveries a turn "
    "carried: none after a turn of one, half of this after a turn of 9, and towards this "
    "as turns grow. Smaller places sooner and spends more CPU on turns: under a flood at "
    "most 1 / (1 + this) of the loop's time goes to full turns.",
    "strategy": "`spread` balances load across workers; `binpack` fills the busiest first.",
    "aging_interval": "Seconds of waiting that raise a task one priority band (0 disables aging).",
    "preference_bonus": "Cost saved for each matched preference.",
    "priority_weight": "Cost of one priority band (raised internally so that a preference "
    "never beats priority).",
    "metrics_port": "Port of the Prometheus endpoint; 0 turns it off.",
    "metrics_bind": "Address the Prometheus endpoint listens on (it has no authentication).",
    "task_types": "Task types expected to be run. A task of any well-formed type is accepted "
    "and waits until a live worker advertises its type; `submit` warns about a type no live "
    "worker advertises, and adds when it is not listed here (docs/tasks.md).",
    "retry_backoff": "Seconds before the first retry of a failed attempt; doubles each "
    "attempt, at most 300 s.",
    "result_grace": "Seconds past a task's timeout before an attempt with no result counts "
    "as failed.",
    "log_format": "`text` or `json` (one object a line).",
    "log_level": "DEBUG, INFO, WARNING or ERROR.",
    "max_pending_per_owner": "Open tasks (pending or in flight) one owner may have; a request "
    "past it is dead-lettered with the reason. 0: no limit.",
    "submit_rate_per_owner": "Tasks per second one owner may submit (a token bucket). 0: no limit.",
    "submit_burst": "Tokens an owner may save up under `submit_rate_per_owner`.",
    "max_priority_by_role": "Highest priority each role may use (`client=7,admin=9`); a role "
    "not listed may not submit.",
    "max_classes_per_round": "Task classes one round considers, highest priority then oldest "
    "first; the rest wait for later rounds. 0: no limit.",
    "queue_type": "Type of the durable queues the scheduler declares: `classic`, or `quorum` "
    "to replicate them on a RabbitMQ cluster. A queue that exists is used as it is. Workers "
    "and clients read `MM_QUEUE_TYPE` for the queues they declare themselves.",
    "http_port": "Port of the HTTP API and dashboard (`docs/api.md`); 0 turns it off. Needs "
    "the `api` extra (starlette, uvicorn).",
    "http_bind": "Address the HTTP API listens on; beyond loopback only with `api_tokens_file`.",
    "api_tokens_file": "File of bearer tokens, one `token role owner` a line (roles: read, "
    "submit, admin), readable by its owner only (0600). Empty: anonymous read-only access, "
    "on loopback only.",
}

HEADER = """# Configuration reference

Generated from `matchmaker.config.Config` by `python -m matchmaker.configdoc`; a test keeps
it current.

Precedence: defaults < TOML file (`--config PATH` or `MM_CONFIG`) < environment (`MM_` and
the key in capitals, e.g. `MM_BROKER_URL`) < command-line flags (the key with dashes, e.g.
`--broker-url`). A list is a TOML array, or commas in the environment and flags.

| key | environment | default | meaning |
|---|---|---|---|
"""


def _default(value: Any) -> str:
    if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return ",".join(f"{k}={v}" for k, v in value)
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "(empty)"
    if value == "":
        return "(empty)"
    return str(value)


def render() -> str:
    rows, defaults = [], Config()
    for f in fields(Config):
        default = getattr(defaults, f.name)
        text = DESCRIPTIONS.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `MM_{f.name.upper()}` | `{_default(default)}` | {text} |")
    return HEADER + "\n".join(rows) + "\n"


def missing() -> list[str]:
    """Fields of ``Config`` without a description."""
    return [f.name for f in fields(Config) if f.name not in DESCRIPTIONS]


def is_current(path: Path) -> bool:
    return path.exists() and path.read_text() == render()


if __name__ == "__main__":
    print(render(), end="")
