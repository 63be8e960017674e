"""SQLite plumbing shared by the conversation and profile stores.

After qutebrowser's ``misc/sql.py``: WAL journal, ``synchronous=FULL`` (an acknowledged write survives
a crash or power cut), ``PRAGMA user_version`` migrations applied in order inside a transaction, and a
:class:`Database.transaction` context manager. A database that is corrupt, unreadable or from a newer
mmchat is moved aside (never deleted, never overwritten) and a fresh one is started; the notice says
where the old file went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mmchat.errors import MMChatError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
# A migration takes the connection and brings the schema from version i to i + 1.
Migration = Callable[[sqlite3.Connection], None]


class Database:
    """One SQLite file with ordered migrations. Safe to share between threads (writes are serialised)."""

    def __init__(self, path: Path | str, migrations: Sequence[Migration]) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        self.migrations = tuple(migrations)
        self.notice: str | None = None  # set when an unusable file was moved aside
        self._lock = threading.RLock()
        try:
            self.conn = self._open_and_migrate()
        except (sqlite3.DatabaseError, _NewerSchema) as exc:
            if self.path is None:
                raise
            moved = _move_aside(self.path, reason=exc)
            self.notice = (f"The database {self.path} could not be used ({exc}). It was moved to {moved} "
                           "and a new, empty one was started.")
            log.warning(self.notice)
            self.conn = self._open_and_migrate()

    @property
    def schema_version(self) -> int:
        return len(self.migrations)

    def _open_and_migrate(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                               isolation_level=None)  # autocommit; transactions are explicit
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            if self.path is not None:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise sqlite3.DatabaseError(f"cannot enable WAL (journal mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            quick = conn.execute("PRAGMA quick_check").fetchone()[0]
            if quick != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {quick}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(self.migrations):
            raise _NewerSchema(f"it was written by a newer mmchat (schema {version}, this one knows {len(self.migrations)})")
        for number in range(version, len(self.migrations)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.migrations[number](conn)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("migrated %s to schema %d", self.path, number + 1)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``with db.transaction() as conn:`` — committed on success, rolled back on error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self.conn.execute("ROLLBACK")
                raise _write_error(exc) from exc

    def query(self, sql: str, params: Sequence | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated DDL inside the current transaction (``executescript`` would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


class _NewerSchema(Exception):
    pass


def _write_error(exc: sqlite3.Error) -> MMChatError:
    return MMChatError(f"Could not save to the database: {exc}.",
                       hint="Check free disk space and that the data folder is writable; nothing already saved was changed.")


def _move_aside(path: Path, *, reason: Exception) -> Path:
    """Rename ``path`` (and its -wal/-shm files) to ``<name>.broken-<time>``; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.broken-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.broken-{stamp}-{counter}")
        counter += 1
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{target}{suffix}"))
    log.warning("moved unusable database %s aside to %s (%s)", path, target, reason)
    return target
