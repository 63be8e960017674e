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
# SQLite primary result codes that mean the storage, not the SQL, failed (sqlite3.h).
SQLITE_STORAGE_ERRORS = {5: "SQLITE_BUSY", 8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 13: "SQLITE_FULL",
                         14: "SQLITE_CANTOPEN"}
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
            self.conn = self._replace_unusable(exc)

    @property
    def schema_version(self) -> int:
        return len(self.migrations)

    def _replace_unusable(self, exc: Exception) -> sqlite3.Connection:
        """Move the unusable file aside and start a new one; MMChatError if even that fails."""
        try:
            moved = _move_aside(self.path, reason=exc)
        except OSError as move_exc:
            raise MMChatError(f"The database {self.path} cannot be used ({exc}) and could not be moved aside "
                              f"({move_exc}).", hint="Check that the data folder is writable.") from move_exc
        self.notice = (f"The database {self.path} could not be used ({exc}). It was moved to {moved} "
                       "and a new, empty one was started.")
        log.warning(self.notice)
        try:
            return self._open_and_migrate()
        except (sqlite3.Error, OSError) as new_exc:
            raise MMChatError(f"{self.notice} But the new one could not be created either ({new_exc}).",
                              hint="Check that the data folder is writable and the disk has free space.") from new_exc

    def _connect(self, target: str) -> sqlite3.Connection:
        return sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                               isolation_level=None)  # autocommit; transactions are explicit

    def _open_and_migrate(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MMChatError(f"Cannot create the data folder {self.path.parent}: {exc}.") from exc
        conn = self._connect(target)
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
            if self.path is not None:
                # A read-only file opens and reads fine, then fails every write: find out now.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")
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
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _write_error(exc) from exc
            try:
                yield self.conn
            except BaseException as exc:
                _rollback(self.conn)
                if isinstance(exc, sqlite3.OperationalError) and _is_storage_error(exc):
                    raise _write_error(exc) from exc
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                _rollback(self.conn)
                raise _write_error(exc) from exc

    def backup(self, target: Path | str) -> Path:
        """Copy the database, consistently, to ``target`` while others may keep writing.

        Uses SQLite's online backup (``sqlite3.Connection.backup``) from a separate read connection,
        in one step: in WAL mode that step reads one committed snapshot while writers carry on (in
        several steps, any write between them would restart the copy, forever under a busy writer).
        The copy is written next to ``target``, checked with ``integrity_check``, then renamed into place."""
        if self.path is None:
            raise MMChatError("A temporary (in-memory) conversation store cannot be backed up.")
        target = Path(target)
        if target.resolve() == self.path.resolve():
            raise MMChatError(f"The backup file {target} is the database itself; choose another path.")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            _copy_snapshot(self.path, tmp)
            os.replace(tmp, target)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise MMChatError(f"Could not back up {self.path} to {target}: {exc}.",
                              hint="Check that the target folder exists, is writable and has free space.") from exc
        return target

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


def _copy_snapshot(source_path: Path, tmp: Path) -> None:
    """One-step online backup of ``source_path`` into the new file ``tmp``, integrity-checked."""
    with contextlib.closing(sqlite3.connect(f"file:{source_path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)) as source, \
            contextlib.closing(sqlite3.connect(tmp)) as dest:
        source.backup(dest)  # pages=-1: everything in one step, one snapshot
        dest.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
        check = dest.execute("PRAGMA integrity_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"the copy failed its integrity check: {check}")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may already have rolled back on I/O errors)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _is_storage_error(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in SQLITE_STORAGE_ERRORS
    return any(words in str(exc) for words in ("disk is full", "disk I/O error", "readonly database"))


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
