"""Unusable conversation databases for the start-up tests (imported by them; not a test module).

``make_unusable(kind, path, monkeypatch)`` leaves at ``path`` a database that mmchat cannot use and
returns its bytes (to check that the moved-aside file is the original, untouched):

* ``corrupt``  — a real database whose pages were overwritten with garbage;
* ``truncated`` — a real database cut to half its length;
* ``newer``    — a database from a newer mmchat (``user_version`` above what this one knows);
* ``readonly-chmod`` — a real database with mode 0444 (meaningless as root: root ignores file modes,
  so that case is skipped there, with that reason);
* ``readonly-open`` — what a read-only file gives SQLite, simulated where chmod cannot (root): the
  first open of ``path`` is a ``mode=ro`` URI open.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from mmchat.db import Database
from mmchat.store import ConversationStore

KINDS = ("corrupt", "truncated", "newer", "readonly-chmod", "readonly-open")
MESSAGES = 300


def filled_database(path: Path) -> None:
    store = ConversationStore(path)
    conversation = store.create_conversation().id
    for i in range(MESSAGES):
        store.add_message(conversation, "user" if i % 2 == 0 else "assistant", f"message {i} " + "x" * 200)
    store.close()  # the last connection checkpoints the WAL into the file
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def mark_newer_schema(path: Path) -> None:
    """Give the database at ``path`` (created if missing) a schema version no mmchat knows yet."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def make_unusable(kind: str, path: Path, monkeypatch) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    filled_database(path)
    data = path.read_bytes()
    if kind == "corrupt":
        damaged = bytearray(data)
        for offset in range(4096, len(damaged), 4096):  # every page after the first
            damaged[offset + 8: offset + 200] = os.urandom(192)
        path.write_bytes(bytes(damaged))
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "newer":
        mark_newer_schema(path)
    elif kind == "readonly-chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root, which ignores file permissions: a chmod 0444 database is still "
                        "writable here (the readonly-open case covers a read-only file instead)")
        path.chmod(0o444)
    elif kind == "readonly-open":
        _open_read_only_once(path, monkeypatch)
    else:
        raise ValueError(kind)
    return path.read_bytes()


def _open_read_only_once(path: Path, monkeypatch) -> None:
    original = Database._connect
    state = {"first": True}

    def connect(self, target: str) -> sqlite3.Connection:
        if state["first"] and Path(target) == path:
            state["first"] = False
            return sqlite3.connect(f"file:{target}?mode=ro", uri=True, check_same_thread=False,
                                   isolation_level=None)
        return original(self, target)

    monkeypatch.setattr(Database, "_connect", connect)


def moved_file(path: Path) -> Path:
    """The one moved-aside copy of ``path``."""
    moved = sorted(p for p in path.parent.glob(f"{path.name}.broken-*") if not p.name.endswith(("-wal", "-shm")))
    assert len(moved) == 1, moved
    return moved[0]
