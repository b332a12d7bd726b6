"""``python -m benchmarks fault``: real tasks and fuzzed messages through injected faults.

The whole system runs as real processes through its public CLI, on a RabbitMQ node
of the harness's own (``fault_env.PrivateBroker``): a Serf agent for the scheduler,
``python -m matchmaker run``, and N ``python -m workers`` started the README way
(``--serf-join``; each starts its own agent). Real ``sleep`` tasks of short random
durations go to ``mm.requests`` through the client library the CLI uses (every
``cli_every``-th batch through ``python -m matchmaker submit --file``), interleaved
with fuzzed messages (``benchmarks.fuzz``) on ``mm.requests`` and ``mm.results``.
Meanwhile, one function per fault: workers are killed with kill -9 every few seconds
and started again; the scheduler is killed with kill -9 and started again; the broker
is stopped and started; a worker's Serf agent is frozen (SIGSTOP) and thawed.

At the end (once every real task is finished and the queues are empty, or the time
is up) each check reads the ledger (read-only), the drained ``mm.dead`` and the
processes' records, one function per check; a summary table is printed and the exit
status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fault_env import (
    ROOT,
    FaultEnvError,
    Managed,
    PrivateBroker,
    child_pids,
    send_signal,
)
from benchmarks.fuzz import Fuzz, Fuzzer, Target, markers_in
from benchmarks.rabbit_node import RabbitNodeError
from matchmaker.ledger import Ledger, LedgerError
from matchmaker.messages import TaskRequest, encode
from matchmaker.wire import broker
from membership.agent import SerfAgent, generate_key

FINAL = ("succeeded", "dead", "cancelled")
TICK = 0.5  # seconds between batches of submissions
EXECUTION = "task started id="  # a worker's per-execution log line (at DEBUG)


@dataclass
class FaultConfig:
    """What a run does; the defaults are the full run."""

    tasks: int = 10_000
    fuzz: int = 10_000
    workers: int = 4
    slots: int = 8
    duration: float = 120.0  # submissions and faults spread over this long
    task_seconds: float = 0.2  # each real task sleeps a uniform 0..this
    task_timeout: float = 120.0
    worker_kill_every: float = 5.0  # 0: none
    scheduler_kills: int = 2
    broker_restarts: int = 1
    broker_down: float = 5.0
    serf_freeze: float = 10.0  # 0: none
    timeout: float = 600.0  # after the last submission, how long the tasks may take
    cli_every: int = 8  # every n-th batch's real tasks go through `matchmaker submit --file`
    seed: int = 0
    families: tuple[str, ...] = ()
    workdir: Path | None = None
    keep: bool = False


@dataclass
class Check:
    name: str
    ok: bool
    figure: str
    details: list[str] = field(default_factory=list)


@dataclass
class Report:
    config: dict[str, Any]
    seconds: dict[str, float]
    faults: dict[str, Any]
    counts: dict[str, Any]
    checks: list[Check]
    workdir: str

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


# -- the system -------------------------------------------------------------------------


class System:
    """The processes of one run and what was sent to them."""

    def __init__(self, config: FaultConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.run_id = f"{self.rng.getrandbits(24):06x}"
        self.broker = PrivateBroker(workdir / "broker")
        self.agent: SerfAgent | None = None
        self.scheduler: Managed | None = None
        self.workers: dict[str, Managed] = {}
        self.encrypt_key = generate_key()
        self.auth_key = generate_key(16)
        self.submit_lock = threading.Lock()  # held while sending; a broker restart waits
        self.real: list[str] = []  # real task ids, in the order sent
        self.fuzzed: list[Fuzz] = []
        self.uncertain: set[str] = set()  # fuzz markers of a send that failed midway
        self.send_errors: list[str] = []
        self.frozen: str | None = None  # the worker whose agent is stopped
        self.timeline: list[tuple[float, str]] = []
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        self.timeline.append((round(time.monotonic() - self.started, 2), text))

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def env(self) -> dict[str, str]:
        """What every process of the system gets: broker and Serf keys through the
        environment, not the command line."""
        (self.workdir / "tmp").mkdir(exist_ok=True)
        return {
            **os.environ,
            "TMPDIR": str(self.workdir / "tmp"),  # what a killed process leaves, counted
            "MM_BROKER_URL": self.broker.url,
            "MM_STATE_DIR": str(self.state_dir),
            "MM_SERF_ENCRYPT": self.encrypt_key,
            "MM_SERF_AUTH": self.auth_key,
            "MM_SERF_AUTH_KEY": self.auth_key,
        }

    def start(self) -> None:
        self.broker.start()
        self.note(f"broker {self.broker.node} on port {self.broker.port}")
        self.agent = SerfAgent(
            "scheduler",
            tags={"role": "scheduler"},
            encrypt_key=self.encrypt_key,
            rpc_auth=self.auth_key,
            workdir=self.workdir / "serf-scheduler",
        ).start()
        args = ["-m", "matchmaker", "run", "--serf-rpc", self.agent.rpc_addr]
        # every process here shares the node's one user, which the scheduler must trust (a
        # forged result then reaches the book's own check, which is the one on trial)
        args += ["--trusted-users", broker.sender(self.broker.url)]
        self.scheduler = Managed("scheduler", args, self.workdir / "scheduler.log", self.env())
        self.scheduler.start()
        self.wait_log(self.scheduler, "this scheduler is active", 60)
        for n in range(1, self.config.workers + 1):
            worker = self.worker_process(f"w{n}")
            worker.start()
            self.workers[worker.name] = worker
        for worker in self.workers.values():
            self.wait_log(worker, "consuming mode=push", 60)
        self.note(f"scheduler and {len(self.workers)} workers up")

    def worker_process(self, name: str) -> Managed:
        """A worker as the README starts one: its name, capabilities, slots, a join address."""
        assert self.agent is not None
        args = [
            "-m", "workers", "--name", name, "--caps", "sleep",
            "--slots", str(self.config.slots), "--serf-join", self.agent.bind_addr,
            "--sandbox", str(self.workdir / "sandbox"), "--log-level", "DEBUG",
        ]  # fmt: skip
        return Managed(name, args, self.workdir / f"worker-{name}.log", self.env())

    def wait_log(self, process: Managed, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in process.tail(10_000):
                return
            if not process.alive():
                raise FaultEnvError(f"{process.name} exited at start:\n{process.tail()}")
            time.sleep(0.1)
        raise FaultEnvError(f"{process.name} did not log {text!r} in {timeout:g}s")

    def stop(self) -> dict[str, Any]:
        """Workers first (they drain), then the scheduler, its agent; exit codes."""
        codes: dict[str, Any] = {}
        for worker in self.workers.values():
            codes[worker.name] = worker.terminate(60)
        if self.scheduler is not None:
            codes["scheduler"] = self.scheduler.terminate(20)
        if self.agent is not None:
            self.agent.cleanup()
        return codes

    def ledger(self) -> Ledger | None:
        try:
            return Ledger(self.state_dir / "ledger.sqlite", readonly=True)
        except LedgerError:
            return None


# -- sending ------------------------------------------------------------------------------


def real_task(system: System, n: int) -> TaskRequest:
    seconds = round(system.rng.uniform(0, system.config.task_seconds), 3)
    task_id = f"t{system.run_id}-{n:06d}"
    return TaskRequest(
        task_id, "sleep", {"seconds": seconds}, max_attempts=10,
        timeout=system.config.task_timeout,
    )  # fmt: skip


def in_flight_targets(system: System) -> Callable[[], Target | None]:
    """Picks a real task to forge a result for: one in flight if the ledger has any."""
    cache: list[Target] = []
    refreshed = [0.0]

    def pick() -> Target | None:
        if time.monotonic() - refreshed[0] > 1.0:
            refreshed[0] = time.monotonic()
            cache.clear()
            ledger = system.ledger()
            if ledger is not None:
                with suppress(Exception):
                    rows = ledger.db.execute(
                        "SELECT id, attempt, worker FROM tasks"
                        " WHERE state IN ('assigned', 'running') LIMIT 200"
                    ).fetchall()
                    cache.extend(Target(r[0], r[1], r[2]) for r in rows)
                ledger.close()
        if cache:
            return system.rng.choice(cache)
        if system.real:
            return Target(system.rng.choice(system.real), 1, None)
        return None

    return pick


def submit_with_cli(system: System, requests: Sequence[TaskRequest]) -> None:
    """``python -m matchmaker submit --file`` with the tasks as JSON lines."""
    path = system.workdir / "submit.jsonl"
    path.write_bytes(b"".join(encode(r) + b"\n" for r in requests))
    done = subprocess.run(
        [sys.executable, "-m", "matchmaker", "submit", "--file", str(path)],
        cwd=ROOT, env=system.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"matchmaker submit exited {done.returncode}: {done.stderr.strip()}")


def publish_results(url: str, bodies: Sequence[bytes]) -> None:
    """Publish to ``mm.results`` as a worker would, in one transaction."""
    connection = broker.connect(url, name="fault-forger")
    try:
        channel = connection.channel()
        channel.tx_select()
        exchange, key = broker.route(broker.RESULTS)
        properties = broker.persistent(broker.sender(url))
        for body in bodies:
            channel.basic_publish(exchange, key, body, properties)
        channel.tx_commit()
    finally:
        with suppress(Exception):
            connection.close()


def send_batch(system: System, batch: int, real: list[TaskRequest], fuzz: list[Fuzz]) -> None:
    """One batch: the real tasks and the fuzzed requests shuffled together on
    ``mm.requests`` (or the tasks through the CLI, then the fuzz), the fuzzed results on
    ``mm.results``. A send that fails is retried for the real tasks only (their ids make
    them idempotent); its fuzzed messages are then ``uncertain``."""
    requests = [f for f in fuzz if f.queue == broker.REQUESTS]
    results = [f.body for f in fuzz if f.queue != broker.REQUESTS]
    with_cli = system.config.cli_every > 0 and batch % system.config.cli_every == 0
    for attempt in range(6):
        with system.submit_lock:
            try:
                if attempt == 0:
                    if with_cli:
                        submit_with_cli(system, real)
                        broker.send_requests(system.broker.url, [f.body for f in requests])
                    else:
                        bodies = [encode(r) for r in real] + [f.body for f in requests]
                        system.rng.shuffle(bodies)
                        broker.send_requests(system.broker.url, bodies)
                    if results:
                        publish_results(system.broker.url, results)
                else:
                    broker.send_requests(system.broker.url, [encode(r) for r in real])
                return
            except Exception as error:  # the broker may be restarting: say so, retry
                system.send_errors.append(f"batch {batch} attempt {attempt + 1}: {error!r}"[:300])
                system.uncertain.update(f.marker for f in fuzz)
        time.sleep(1.0)
    raise RuntimeError(f"batch {batch}: could not send its real tasks: {system.send_errors[-1]}")


def submitter(system: System, stop: threading.Event) -> None:
    """Sends the real tasks and the fuzzed messages in batches every ``TICK`` seconds,
    spread over ``duration``."""
    config = system.config
    batches = max(1, int(config.duration / TICK))
    fuzzer = Fuzzer(config.seed, config.families)
    target = in_flight_targets(system)
    names = sorted(system.workers)
    sent_tasks = sent_fuzz = 0
    begin = time.monotonic()
    for batch in range(batches):
        if stop.is_set():
            return
        due = begin + batch * TICK
        time.sleep(max(0.0, due - time.monotonic()))
        upto_tasks = config.tasks * (batch + 1) // batches
        upto_fuzz = config.fuzz * (batch + 1) // batches
        real = [real_task(system, n) for n in range(sent_tasks, upto_tasks)]
        fuzz = [fuzzer.next(target, names) for _ in range(sent_fuzz, upto_fuzz)]
        sent_tasks, sent_fuzz = upto_tasks, upto_fuzz
        try:
            send_batch(system, batch, real, fuzz)
        except RuntimeError as error:  # the broker is gone for good: the checks say so
            system.note(f"sending stopped: {error}")
            return
        system.real.extend(r.id for r in real)
        system.fuzzed.extend(fuzz)
    system.note(f"sent {len(system.real)} tasks and {len(system.fuzzed)} fuzzed messages")


# -- faults (one function each) ---------------------------------------------------------


def kill_workers(system: System, stop: threading.Event) -> None:
    """Every ``worker_kill_every`` seconds of the duration a worker (in turn, never the
    frozen one) gets kill -9 (its Serf agent dies with it) and is started again the
    README way: proves that tasks of a worker that vanishes are neither lost nor
    completed twice, and that a worker restarted under the same name is used again."""
    interval = system.config.worker_kill_every
    names = sorted(system.workers)
    turn = 0
    until = time.monotonic() + system.config.duration
    while interval > 0 and not stop.wait(interval) and time.monotonic() < until:
        candidates = [n for n in names if n != system.frozen]
        if not candidates:
            continue
        name = candidates[turn % len(candidates)]
        turn += 1
        system.workers[name].kill(restart=True)
        system.note(f"kill -9 worker {name}; started again")


def kill_scheduler(system: System) -> None:
    """kill -9 of the scheduler, started again at once: proves that what it had taken in
    but not committed comes again and nothing it committed is lost or done twice."""
    assert system.scheduler is not None
    system.scheduler.kill(restart=True)
    system.note("kill -9 scheduler; started again")


def restart_broker(system: System) -> None:
    """The broker's application stopped for ``broker_down`` seconds and started again
    (sends wait meanwhile): proves that every process reconnects and that persistent
    messages survive."""
    with system.submit_lock:
        system.note("broker stop_app")
        system.broker.stop_app()
        time.sleep(system.config.broker_down)
        system.broker.start_app()
        system.note("broker start_app done")


def freeze_serf(system: System) -> None:
    """A worker's Serf agent gets SIGSTOP for ``serf_freeze`` seconds, then SIGCONT:
    proves that a worker seen as failed and then alive again loses no task and
    completes none twice (its old attempts' results are stale)."""
    name = sorted(system.workers)[-1]
    system.frozen = name
    try:
        pid = system.workers[name].pid
        agents = child_pids(pid, "serf") if pid else []
        if not agents:
            system.note(f"freeze: no Serf agent found under worker {name}")
            return
        for agent in agents:
            send_signal(agent, signal.SIGSTOP)
        system.note(f"SIGSTOP Serf agent of worker {name}")
        time.sleep(system.config.serf_freeze)
        for agent in agents:
            send_signal(agent, signal.SIGCONT)
        system.note(f"SIGCONT Serf agent of worker {name}")
    finally:
        system.frozen = None


def rare_faults(system: System, stop: threading.Event) -> None:
    """The scheduler kills, broker restarts and the freeze, spread over the duration so
    that no two overlap: at fractions of the duration, in turn."""
    config = system.config
    plan: list[Callable[[System], None]] = []
    kills = [kill_scheduler] * config.scheduler_kills
    restarts = [restart_broker] * config.broker_restarts
    while kills or restarts:  # alternate: kill, restart, kill, ...
        if kills:
            plan.append(kills.pop())
        if restarts:
            plan.append(restarts.pop())
    if config.serf_freeze > 0:
        plan.append(freeze_serf)
    begin = time.monotonic()
    for n, fault in enumerate(plan, 1):
        due = begin + config.duration * n / (len(plan) + 1)
        if stop.wait(max(0.0, due - time.monotonic())):
            return
        try:
            fault(system)
        except Exception as error:  # noted in the report; the run goes on
            system.note(f"{fault.__name__} failed: {error}")


def watch(system: System, stop: threading.Event) -> None:
    """Every exit of the scheduler or a worker the harness did not cause is recorded and
    the process started again."""
    while not stop.wait(0.2):
        processes = [system.scheduler, *system.workers.values()]
        for process in processes:
            if process is not None and (gone := process.check_exit()) is not None:
                system.note(f"{gone.name} exited by itself (code {gone.code}); started again")


# -- the end of a run ---------------------------------------------------------------------


def settle(system: System, timeout: float) -> bool:
    """Wait (bounded) until every real task is finished and ``mm.requests`` and
    ``mm.results`` are empty; whether they got there."""
    deadline = time.monotonic() + timeout
    ids = set(system.real)
    while time.monotonic() < deadline:
        if len(ids) - finished_count(system, ids) == 0:
            with suppress(RabbitNodeError):
                depths = system.broker.queue_depths()
                if depths.get(broker.REQUESTS, 0) == 0 and depths.get(broker.RESULTS, 0) == 0:
                    return True
        time.sleep(2.0)
    return False


def finished_count(system: System, ids: set[str]) -> int:
    ledger = system.ledger()
    if ledger is None:
        return 0
    try:
        rows = ledger.db.execute(
            "SELECT id FROM tasks WHERE id LIKE ? AND state IN (?, ?, ?)",
            (f"t{system.run_id}-%", *FINAL),
        ).fetchall()
    except Exception:
        return 0
    finally:
        ledger.close()
    return sum(1 for (task_id,) in rows if task_id in ids)


def workers_seen(system: System, timeout: float) -> dict[str, str]:
    """Each worker's status as ``python -m matchmaker workers --json`` shows it, polled
    (bounded) until every one is ``alive``."""
    assert system.agent is not None
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "matchmaker", "workers", "--json",
             "--serf-rpc", system.agent.rpc_addr],
            cwd=ROOT, env=system.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        try:
            rows = json.loads(done.stdout)
            seen = {str(r["name"]): str(r["status"]) for r in rows}
        except (ValueError, KeyError, TypeError):
            seen = {"(matchmaker workers)": (done.stderr.strip() or done.stdout)[:200]}
        statuses = [seen.get(name, "absent") for name in system.workers]
        if all(s == "alive" for s in statuses) or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


@dataclass
class Letter:
    """A message taken off ``mm.dead``."""

    body: bytes
    headers: dict[str, Any]
    message_id: str | None


def drain_dead(url: str) -> list[Letter]:
    """Every message on ``mm.dead``, taken off it."""
    connection = broker.connect(url, attempts=10, name="fault-dead")
    out = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(broker.DEAD, auto_ack=True)
            if method is None:
                break
            headers = dict(getattr(properties, "headers", None) or {})
            out.append(Letter(body or b"", headers, getattr(properties, "message_id", None)))
    finally:
        with suppress(Exception):
            connection.close()
    return out


def executions(system: System) -> Counter[str]:
    """Executions started per real task, from the workers' own per-task log lines."""
    counts: Counter[str] = Counter()
    prefix = f"{EXECUTION}t{system.run_id}-"
    for worker in system.workers.values():
        with suppress(OSError), worker.log.open(errors="replace") as lines:
            for line in lines:
                at = line.find(prefix)
                if at >= 0:
                    counts[line[at + len(EXECUTION) :].split()[0]] += 1
    return counts


# -- checks (one function each) ---------------------------------------------------------


def check_lost(rows: dict[str, tuple[str, str | None]], real: Sequence[str]) -> Check:
    """Every submitted real task ends ``succeeded`` in the ledger: none lost."""
    states = Counter(rows[i][0] if i in rows else "missing from the ledger" for i in real)
    lost = len(real) - states.get("succeeded", 0)
    details = [f"{state}: {n}" for state, n in states.items() if state != "succeeded"]
    examples = [i for i in real if rows.get(i, ("",))[0] != "succeeded"][:5]
    if examples:
        details.append(f"e.g. {', '.join(examples)}")
    return Check("real tasks lost", lost == 0, f"{lost} of {len(real):,}", details)


def check_completed_twice(
    succeeded: Counter[str], runs: Counter[str], real: Sequence[str]
) -> Check:
    """No real task has more than one ``succeeded`` transition in the ledger (executions
    may repeat under at-least-once delivery; completions may not)."""
    twice = {i: n for i in real if (n := succeeded.get(i, 0)) > 1}
    repeated = {i: n for i in real if (n := runs.get(i, 0)) > 1}
    details = [f"{i}: {n} succeeded transitions" for i, n in list(twice.items())[:5]]
    details.append(
        f"executions (workers' logs): {sum(runs.values()):,} for {len(real):,} tasks;"
        f" {len(repeated)} tasks ran more than once ({sum(repeated.values()) - len(repeated)}"
        " extra runs)"
    )
    return Check("real tasks completed twice", not twice, f"{len(twice)}", details)


def check_scheduler_exits(system: System) -> Check:
    """The scheduler never exits but when the harness kills it: each other exit is shown
    with the end of its output."""
    assert system.scheduler is not None
    exits = system.scheduler.unexpected
    details = []
    for gone in exits[:3]:
        details.append(f"exit code {gone.code}; output ends:")
        details += [f"  {line}" for line in gone.tail.splitlines()[-8:]]
    if len(exits) > 3:
        details.append(f"... and {len(exits) - 3} more exits")
    return Check("scheduler exits not caused by the run", not exits, f"{len(exits)}", details)


def idle_restarts(log: Path) -> list[int]:
    """The incarnations (2, 3, ...) of a worker, from its log, that came up (consumed
    from the broker) and started no task."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    parts = text.split("--- start ")[1:]
    return [
        n
        for n, part in enumerate(parts, 1)
        if n > 1 and "consuming mode=" in part and EXECUTION not in part
    ]


def check_workers_seen(system: System, seen: dict[str, str]) -> Check:
    """Every worker, killed and started again the README way or frozen and thawed, is
    back in the pool the scheduler sees (``matchmaker workers``), so it gets work again."""
    gone = {name: seen.get(name, "absent") for name in system.workers}
    gone = {name: status for name, status in gone.items() if status != "alive"}
    details = [f"{name}: {status}" for name, status in sorted(gone.items())]
    idle = [f"{w.name}#{n}" for w in system.workers.values() for n in idle_restarts(w.log)]
    restarts = sum(w.starts - 1 for w in system.workers.values())
    details.append(
        f"restarted incarnations that ran no task before their end: {len(idle)} of {restarts}"
        + (f" ({', '.join(idle[:8])})" if idle else "")
    )
    figure = f"{len(system.workers) - len(gone)} of {len(system.workers)} alive"
    return Check("workers back in the pool", not gone, figure, details)


def check_dead_letters(
    fuzzed: Sequence[Fuzz], dead: Sequence[Letter], uncertain: set[str], accepted: set[str]
) -> Check:
    """Every fuzzed message (each unit: a message, or an item of a bad ``results`` batch)
    is on ``mm.dead`` exactly once, with a reason header. Letters with the same
    ``message_id`` are one letter published again (a consumer drops the copies).
    A unit with no marker of its own (a batch item too deep to write again, which the
    scheduler describes instead) is counted among the letters that carry no marker."""
    letters = {letter.message_id or f"#{n}": letter for n, letter in enumerate(dead)}
    seen: Counter[str] = Counter()
    reasonless = 0
    anonymous: list[Letter] = []
    for letter in letters.values():
        markers = markers_in(letter.body)
        seen.update(markers)
        if not markers:
            anonymous.append(letter)
        if not str(letter.headers.get("x-mm-reason", "")).strip():
            reasonless += 1
    missing: Counter[str] = Counter()
    duplicated: Counter[str] = Counter()
    units = unmarked = 0
    for f in fuzzed:
        if f.expect != "dead":
            continue
        if not f.units:  # its letter carries its marker, or no marker at all
            unmarked += seen.get(f.marker, 0) == 0
            if seen.get(f.marker, 0) > 1:
                duplicated[f.family] += 1
        for unit in f.units:
            units += 1
            count = seen.get(unit, 0)
            if count == 0 and unit not in uncertain:
                missing[f.family] += 1
            elif count > 1 and unit not in uncertain:
                duplicated[f.family] += 1
    if len(anonymous) < unmarked:
        missing["(units without a marker)"] += unmarked - len(anonymous)
    elif len(anonymous) > unmarked:
        duplicated["(letters without a marker)"] += len(anonymous) - unmarked
    details = [
        f"dead letters: {len(dead):,}; distinct by message_id {len(letters):,};"
        f" units expected {units + unmarked:,} ({unmarked} without a marker)",
        f"accepted as tasks instead: {len(accepted)} {sorted(accepted)[:3] if accepted else ''}",
    ]
    if uncertain:
        details.append(f"sent during a failed send (not counted): {len(uncertain)}")
    details += [f"missing {family}: {n}" for family, n in missing.most_common(12)]
    details += [f"duplicated {family}: {n}" for family, n in duplicated.most_common(12)]
    for letter in anonymous[unmarked : unmarked + 3]:
        reason = str(letter.headers.get("x-mm-reason", ""))[:120]
        details.append(f"letter without a marker: {letter.body[:100]!r} reason {reason!r}")
    ok = not missing and not duplicated and not reasonless
    figure = f"missing {sum(missing.values()):,}, duplicated {sum(duplicated.values()):,}"
    if reasonless:
        figure += f", without a reason {reasonless}"
    return Check("fuzzed messages dead-lettered once", ok, figure, details)


def check_forged(
    fuzzed: Sequence[Fuzz],
    tasks: dict[str, tuple[str, str | None]],
    outputs: dict[str, str],
    transitions: Sequence[tuple[str, str, str | None, str | None]],
    dead: Sequence[Letter],
) -> Check:
    """A forged result (a well-formed result from a worker the attempt was not dispatched
    to) changes nothing: no task ends with its output, error or worker, no accepted
    transition carries it; each is recorded (an ``ignored``/``rejected`` transition or a
    dead letter)."""
    forged = [f for f in fuzzed if f.expect == "ignored"]
    markers = {f.marker for f in forged}
    changed: set[str] = set()
    for text in outputs.values():
        changed.update(markers_in(text.encode()) & markers)
    for _state, worker in tasks.values():
        if worker and worker.startswith("forger-"):
            changed.add(worker.removeprefix("forger-"))
    recorded_keys = set()
    for task_id, state, worker, note in transitions:
        refused = state.startswith(("ignored", "rejected"))
        marker = worker.removeprefix("forger-") if worker and worker.startswith("forger-") else None
        found = markers_in((note or "").encode()) & markers
        if not refused:
            changed.update(found)
            if marker in markers:
                changed.add(marker)
        else:
            recorded_keys.add((task_id, worker))
            if marker:
                recorded_keys.add((marker, None))
    in_dead = set().union(*(markers_in(letter.body) for letter in dead))
    unrecorded = [
        f for f in forged
        if f.marker not in in_dead and (f.target, f.worker) not in recorded_keys
        and (f.marker, None) not in recorded_keys
    ]  # fmt: skip
    by_family = Counter(f.family for f in forged if f.marker in changed)
    details = [f"changed by {family}: {n}" for family, n in by_family.most_common()]
    details.append(f"recorded as refused: {len(forged) - len(unrecorded)} of {len(forged)}")
    details += [f"not recorded {f.family}: {f.target}" for f in unrecorded[:3]]
    ok = not changed and not unrecorded
    return Check(
        "forged results changed nothing", ok, f"{len(changed)} of {len(forged)} changed", details
    )


# -- one run ------------------------------------------------------------------------------


def run(config: FaultConfig) -> Report:
    """One run: start, send and inject faults, settle, stop, check."""
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="mm-fault-"))
    workdir.mkdir(parents=True, exist_ok=True)
    system = System(config, workdir)
    seconds: dict[str, float] = {}
    began = time.monotonic()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    settled = False
    seen: dict[str, str] = {}
    try:
        system.start()
    except BaseException:
        system.stop()
        system.broker.stop()
        raise
    seconds["start"] = time.monotonic() - began
    try:
        sending = threading.Thread(target=submitter, args=(system, stop), name="submitter")
        threads = [
            threading.Thread(target=f, args=(system, stop), name=f.__name__, daemon=True)
            for f in (watch, kill_workers, rare_faults)
        ]
        for thread in [sending, *threads]:
            thread.start()
        sending.join()
        seconds["send"] = time.monotonic() - began - seconds["start"]
        threads[1].join()  # the faults are all over before the settling
        threads[2].join()
        settled_at = time.monotonic()
        settled = settle(system, config.timeout)
        seconds["settle"] = time.monotonic() - settled_at
        seen = workers_seen(system, 30.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        codes = system.stop()
    try:
        report = _report(system, config, seconds, settled, codes, seen)
    finally:
        system.broker.stop()
    report.seconds["total"] = round(time.monotonic() - began, 1)
    return report


def _report(
    system: System,
    config: FaultConfig,
    seconds: dict[str, float],
    settled: bool,
    codes: dict[str, Any],
    seen: dict[str, str],
) -> Report:
    dead = drain_dead(system.broker.url)
    ledger = system.ledger()
    real = system.real
    rows: dict[str, tuple[str, str | None]] = {}
    outputs: dict[str, str] = {}
    succeeded: Counter[str] = Counter()
    transitions: list[tuple[str, str, str | None, str | None]] = []
    accepted: set[str] = set()
    if ledger is not None:
        db = ledger.db
        for task_id, state, worker, output, error in db.execute(
            "SELECT id, state, worker, output, error FROM tasks"
        ):
            rows[task_id] = (state, worker)
            if output or error:
                outputs[task_id] = f"{output or ''} {error or ''}"
            if task_id.startswith("fz"):
                accepted.add(task_id)
        succeeded.update(
            i for (i,) in db.execute("SELECT id FROM transitions WHERE state = 'succeeded'")
        )
        transitions = [
            (r[0], r[1], r[2], r[3])
            for r in db.execute(
                "SELECT id, state, worker, note FROM transitions"
                " WHERE worker LIKE 'forger-%' OR note LIKE '%forged fz%'"
                " OR state LIKE 'ignored%' OR state LIKE 'rejected%'"
            )
        ]
        ledger.close()
    cli = cli_status_matches(system, real[:: max(1, len(real) // 3)][:3], rows)
    checks = [
        check_lost(rows, real),
        check_completed_twice(succeeded, executions(system), real),
        check_scheduler_exits(system),
        check_workers_seen(system, seen),
        check_dead_letters(system.fuzzed, dead, system.uncertain, accepted),
        check_forged(system.fuzzed, rows, outputs, transitions, dead),
    ]
    worker_exits = [e for w in system.workers.values() for e in w.unexpected]
    scheduler_exits = system.scheduler.unexpected if system.scheduler else []
    families = Counter(f.family.split(":")[0] for f in system.fuzzed)
    return Report(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        seconds={k: round(v, 1) for k, v in seconds.items()},
        faults={
            "worker_kills": sum(w.kills for w in system.workers.values()),
            "scheduler_kills": system.scheduler.kills if system.scheduler else 0,
            "scheduler_unexpected_exits": len(scheduler_exits),
            "worker_unexpected_exits": len(worker_exits),
            "worker_exit_reasons": [
                f"{e.name} code {e.code}: {(e.tail.splitlines() or [''])[-1][:160]}"
                for e in worker_exits
            ],
            "timeline": system.timeline,
        },
        counts={
            "tasks": len(real),
            "fuzzed": len(system.fuzzed),
            "fuzzed_by_family": dict(families),
            "dead_letters": len(dead),
            "settled": settled,
            "send_errors": system.send_errors[:10],
            "stop_codes": codes,
            "left_in_tmp": sorted(p.name for p in (system.workdir / "tmp").glob("*"))[:50],
            "cli_status_agrees": cli,
        },
        checks=checks,
        workdir=str(system.workdir),
    )


def cli_status_matches(
    system: System, ids: Sequence[str], rows: dict[str, tuple[str, str | None]]
) -> bool:
    """``python -m matchmaker status --json`` reports the state the ledger holds."""
    for task_id in ids:
        done = subprocess.run(
            [sys.executable, "-m", "matchmaker", "status", task_id, "--json"],
            cwd=ROOT, env=system.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        try:
            state = json.loads(done.stdout)["state"]
        except (ValueError, KeyError):
            state = None
        if state != rows.get(task_id, (None,))[0]:
            return False
    return True


# -- output -------------------------------------------------------------------------------


def table(report: Report) -> str:
    c, f, n = report.config, report.faults, report.counts
    lines = [
        f"fault run: {n['tasks']:,} tasks, {n['fuzzed']:,} fuzzed messages,"
        f" {c['workers']} workers x {c['slots']} slots; {report.seconds.get('total', 0):g} s"
        f" (send {report.seconds.get('send', 0):g} s, settle {report.seconds.get('settle', 0):g} s"
        f"{'' if n['settled'] else ', NOT settled: time up'})",
        f"faults: {f['worker_kills']} worker kill -9s, {f['scheduler_kills']} scheduler"
        f" kill -9s, {c['broker_restarts']} broker restart(s) ({c['broker_down']:g} s down),"
        f" Serf agent frozen {c['serf_freeze']:g} s; workers exiting by themselves:"
        f" {f['worker_unexpected_exits']}",
        "",
        f"{'check':<40} {'result':<6}  figure",
    ]
    for check in report.checks:
        lines.append(f"{check.name:<40} {'PASS' if check.ok else 'FAIL':<6}  {check.figure}")
        lines += [f"    {d}" for d in check.details]
    if n["left_in_tmp"]:
        lines.append(f"left in TMPDIR after the stop: {len(n['left_in_tmp'])} entries")
    for gone in f["worker_exit_reasons"][:5]:
        lines.append(f"worker exit by itself: {gone}")
    lines.append("")
    lines.append(f"workdir: {report.workdir}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FaultConfig()
    p.add_argument("--tasks", type=int, default=d.tasks, help="real tasks")
    p.add_argument("--fuzz", type=int, default=d.fuzz, help="fuzzed messages")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--slots", type=int, default=d.slots)
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of sending")
    p.add_argument("--task-seconds", type=float, default=d.task_seconds)
    p.add_argument("--worker-kill-every", type=float, default=d.worker_kill_every, help="0: none")
    p.add_argument("--scheduler-kills", type=int, default=d.scheduler_kills)
    p.add_argument("--broker-restarts", type=int, default=d.broker_restarts)
    p.add_argument("--broker-down", type=float, default=d.broker_down)
    p.add_argument("--serf-freeze", type=float, default=d.serf_freeze, help="seconds; 0: none")
    p.add_argument("--timeout", type=float, default=d.timeout, help="to settle, after sending")
    p.add_argument("--cli-every", type=int, default=d.cli_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--fuzz-families", default="", help="comma-separated family prefixes")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--out", type=Path, default=Path("results/fault.json"))


def config_from(args: argparse.Namespace) -> FaultConfig:
    families = tuple(f.strip() for f in args.fuzz_families.split(",") if f.strip())
    return FaultConfig(
        tasks=args.tasks, fuzz=args.fuzz, workers=args.workers, slots=args.slots,
        duration=args.duration, task_seconds=args.task_seconds,
        worker_kill_every=args.worker_kill_every, scheduler_kills=args.scheduler_kills,
        broker_restarts=args.broker_restarts, broker_down=args.broker_down,
        serf_freeze=args.serf_freeze, timeout=args.timeout, cli_every=args.cli_every,
        seed=args.seed, families=families, workdir=args.workdir, keep=args.keep,
    )  # fmt: skip


def to_json(report: Report) -> dict[str, Any]:
    return {**asdict(report), "ok": report.ok}


def cleanup(report: Report, keep: bool) -> None:
    if report.ok and not keep:
        shutil.rmtree(report.workdir, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    """Run, print the table, write the JSON report; 1 if any check failed."""
    config = config_from(args)
    try:
        report = run(config)
    except (FaultEnvError, RabbitNodeError) as error:
        print(f"fault: {error}", file=sys.stderr)
        return 2
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(report), indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    cleanup(report, config.keep)
    return 0 if report.ok else 1
