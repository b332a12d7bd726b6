"""The embedded backend: the ledger in one SQLite file (WAL), the default.

The writer makes its files 0600 (the database, its log and its index) in a
0700 directory; a reader opens it read-only through a percent-encoded
``file:`` URI, on a connection any thread may use (one at a time: the API's
``Store`` locks it). A write transaction is ``BEGIN IMMEDIATE``: it holds SQLite's
one write lock from its first write to its commit, so the fencing check
(``TaskLedger.commit``) and a take-over by another process on the same file
are serialised by that lock.

Checkpoints: by default SQLite copies the write-ahead log into the database
file inside whichever COMMIT takes the log past 1,000 pages, and that copy
and its fsync stall the scheduler's loop inside the commit, repeatedly under
load. The scheduler opens its ledger with
``background_checkpoints=True``: a ``Checkpointer`` thread, on a connection
of its own, copies the log every quarter second in PASSIVE mode (never
waiting for the writer or a reader; SQLite releases the GIL meanwhile). The log starts
again from its head only when a writer finds it wholly copied, which a busy
writer never does; so once it is long, the thread copies it in passes back
to back until one finds few new frames, and the writer's next ``commit()``
copies those few itself (a short copy), after which its next write
starts the log again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

from matchmaker.ledger import migrations
from matchmaker.ledger.base import TaskLedger
from matchmaker.ledger.rows import LedgerError

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 0.25  # short passes: a long one's fsync held up the writer's appends
RESTART_FRAMES = 8192  # a log this long (32 MiB of 4 KiB pages) is caught up and restarted
CATCH_UP_FRAMES = 256  # what the writer's own checkpoint then copies, at most about
CATCH_UP_PASSES = 20
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) if missing, the last one 0700; an existing one open
    to others is closed to them, unless it is a shared sticky directory such as /tmp."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & 0o077 and not mode & stat.S_ISVTX:
        path.chmod(PRIVATE_DIR)
    elif mode & 0o077:
        log.warning("%s is a shared directory: only the ledger's own files are private", path)


def migrate(db: sqlite3.Connection, where: Path, readonly: bool) -> None:
    """Apply the missing numbered migrations (``PRAGMA user_version``), or for a reader
    check that there are none."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > migrations.LATEST:
        raise LedgerError(
            f"the ledger at {where} has schema version {version}, newer than this "
            f"matchmaker's {migrations.LATEST}: use a matchmaker at least as new"
        )
    if version == migrations.LATEST:
        return
    if readonly:
        raise LedgerError(
            f"the ledger at {where} has schema version {version}, older than this "
            f"matchmaker's {migrations.LATEST}: a scheduler of this version upgrades it"
        )
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])  # another may have
        for step in migrations.SQLITE[version:]:
            step(db)
        db.execute(f"PRAGMA user_version = {migrations.LATEST}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class SqliteLedger(TaskLedger):
    """Durable task states in one SQLite file."""

    def __init__(
        self, path: Path | str, *, readonly: bool = False, background_checkpoints: bool = False
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise LedgerError(f"no ledger at {self.path} (has the scheduler run here?)")
                uri = self.path.resolve().as_uri() + "?mode=ro"  # the path percent-encoded
                self.db = sqlite3.connect(
                    uri, uri=True, isolation_level=None, timeout=10, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                umask = os.umask(0o077)  # the file, its log and its index made 0600
                try:
                    self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                    self.db.execute("PRAGMA journal_mode=WAL")
                    self.db.execute("PRAGMA synchronous=NORMAL")
                    if background_checkpoints:
                        self.db.execute("PRAGMA wal_autocheckpoint=0")
                    migrate(self.db, self.path, readonly=False)
                finally:
                    os.umask(umask)
                self._private_files()
            if readonly:
                migrate(self.db, self.path, readonly=True)
            self.db.row_factory = sqlite3.Row
            self.db.execute("SELECT 1 FROM tasks LIMIT 1")
        except sqlite3.DatabaseError as error:
            raise LedgerError(f"cannot open the ledger at {self.path}: {error}") from None
        self._init_batches()
        self.checkpoints = Checkpointer(self.path).start() if background_checkpoints else None

    def _private_files(self) -> None:
        """The database, its write-ahead log and its shared-memory index: owner only (SQLite
        makes the last two with the database's mode, this corrects older files)."""
        for suffix in ("", "-wal", "-shm"):
            file = self.path.with_name(self.path.name + suffix)
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(PRIVATE_FILE)

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.stop()
        self.db.close()

    def _run(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, params).fetchall()

    def _many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.db.executemany(sql, rows)

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def _end(self, commit: bool) -> None:
        if commit:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled it back itself
            self.db.execute("ROLLBACK")

    def _committed(self) -> None:
        if self.checkpoints is not None and self.checkpoints.caught_up.is_set():
            self.checkpoints.caught_up.clear()
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the last few frames


class Checkpointer:
    """Copies a ledger's write-ahead log into its database file, from a thread of its own.

    Every ``interval`` seconds a PASSIVE checkpoint; once the log holds more than
    ``restart_frames``, passes back to back until one finds no more than
    ``CATCH_UP_FRAMES`` new frames, then ``caught_up`` is set for the writer.
    """

    def __init__(
        self,
        path: Path | str,
        interval: float = CHECKPOINT_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.restart_frames = restart_frames
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after a last checkpoint."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                try:
                    self._checkpoint(db)
                except sqlite3.Error as error:  # the writer goes on meanwhile
                    log.warning("ledger checkpoint failed: %s", error)
                if stopping:
                    return
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        copied = 0
        for _ in range(CATCH_UP_PASSES):
            last = copied
            _busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames <= self.restart_frames:
                return
            if frames - last <= CATCH_UP_FRAMES:  # this pass had little more to copy
                self.caught_up.set()
                return
