"""A gateway's chain of tasks through ``matchmaker.client``: run the first step on each
input, wait on all of them, then run the second step on their outputs and wait on it.

The task types are arguments, so the same script drives the built-in ``sleep`` (the
default) or the example package's ``wordcount`` and ``aggregate``::

    python examples/gateway/client_chain.py                      # sleep, then sleep
    python examples/gateway/client_chain.py --first wordcount --then aggregate \\
        --input '{"text": "the cat and the hat"}' --input '{"text": "the hat, the bat"}'

The second step's payload is ``--then-payload`` with the first steps' outputs, in input
order, under ``--parts-key`` (``parts``). The broker comes from ``--broker-url`` or
``MM_BROKER_URL``, its password from ``--password-file`` or ``MM_BROKER_PASSWORD_FILE``,
TLS files from ``MM_BROKER_CA``, ``MM_BROKER_CERT``, ``MM_BROKER_KEY``. It prints one JSON
object: each step's task ids and outputs. A step that fails ends the script with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

from matchmaker.client import Client, TaskError


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a payload must be a JSON object")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", default=os.environ.get("MM_BROKER_URL"))
    parser.add_argument("--password-file", default=os.environ.get("MM_BROKER_PASSWORD_FILE"))
    parser.add_argument("--first", default="sleep", help="the first step's task type")
    parser.add_argument("--input", type=_object, action="append", help="a first-step payload")
    parser.add_argument("--then", default="sleep", help="the second step's task type")
    parser.add_argument("--then-payload", type=_object, default={"seconds": 0.1})
    parser.add_argument("--parts-key", default="parts")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per step")
    args = parser.parse_args(argv)
    inputs = args.input or [{"seconds": 0.2}, {"seconds": 0.3}]
    chain = uuid.uuid4().hex[:8]  # ids of our own: a rerun is a new chain

    options: dict[str, Any] = {
        "password_file": args.password_file,
        "broker_ca": os.environ.get("MM_BROKER_CA", ""),
        "broker_cert": os.environ.get("MM_BROKER_CERT", ""),
        "broker_key": os.environ.get("MM_BROKER_KEY", ""),
    }
    urls = (args.broker_url or "amqp://matchmaker:matchmaker@127.0.0.1:5672/matchmaker").split(",")
    try:
        with Client(urls, **options) as client:
            firsts = client.submit_many(
                {"type": args.first, "payload": payload, "id": f"chain-{chain}-{n}"}
                for n, payload in enumerate(inputs)
            )
            parts = [handle.wait(timeout=args.timeout) for handle in firsts]
            payload = {**args.then_payload, args.parts_key: parts}
            last = client.submit(args.then, payload, id=f"chain-{chain}-then")
            output = last.wait(timeout=args.timeout)
    except TaskError as error:
        print(f"client_chain: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as error:  # ClientError is a RuntimeError
        print(f"client_chain: {error}", file=sys.stderr)
        return 2
    result = {
        "first": {h.id: p for h, p in zip(firsts, parts, strict=True)},
        "then": {last.id: output},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
