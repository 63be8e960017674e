"""Conversations, messages and their attachments, in SQLite.

Every message is written when it is created (one row, committed, fsynced by ``synchronous=FULL``);
nothing waits for exit. Attachments (images as PNG, audio as FLAC) live in the same database so a
backup is one file. Deleting a conversation is a soft delete first (undo), purged later.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmchat import paths
from mmchat.db import Database, run_script

ROLES = ("system", "user", "assistant")
STATUSES = ("complete", "stopped", "error")
DEFAULT_TITLE = "New chat"
TITLE_CHARS = 60


def _v1(conn: sqlite3.Connection) -> None:
    run_script(conn, """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            deleted REAL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            created REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete',
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
        CREATE TABLE attachments (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('image', 'audio')),
            mime TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            data BLOB NOT NULL,
            sha256 TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX attachments_by_message ON attachments(message_id);
    """)


def _v2(conn: sqlite3.Connection) -> None:
    """Conversations belong to a local profile (``mmchat.profile``); existing ones to the first."""
    run_script(conn, """
        ALTER TABLE conversations ADD COLUMN profile_id INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX conversations_by_profile ON conversations(profile_id, updated)
    """)


MIGRATIONS = (_v1, _v2)
DEFAULT_PROFILE_ID = 1  # the profile every conversation from before profiles existed belongs to


@dataclass(frozen=True)
class Attachment:
    kind: str  # "image" | "audio"
    mime: str  # "image/png", "audio/flac"
    data: bytes
    name: str = ""
    meta: dict = field(default_factory=dict)
    id: int | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    created: float
    status: str = "complete"
    meta: dict = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    message_count: int = 0


@dataclass(frozen=True)
class Turn:
    """A user message and the reply to it, as retrieved from an earlier conversation."""

    message_id: int  # the reply's id
    conversation_id: int
    question: str
    reply: str


class ConversationStore:
    """The conversation database. ``notice`` is set when a broken file had to be moved aside.

    A store sees the conversations of one local profile (``profile_id``); switch with
    :meth:`use_profile`."""

    def __init__(self, path: Path | str | None = None, *, profile_id: int = DEFAULT_PROFILE_ID) -> None:
        self.db = Database(path if path is not None else paths.database_path(), MIGRATIONS)
        self.profile_id = profile_id

    def use_profile(self, profile_id: int) -> None:
        self.profile_id = int(profile_id)

    @property
    def notice(self) -> str | None:
        return self.db.notice

    def close(self) -> None:
        self.db.close()

    def backup(self, target: Path | str) -> Path:
        """A consistent copy of every conversation in ``target`` (safe while another process writes)."""
        return self.db.backup(target)

    # -- conversations -------------------------------------------------------------------------
    def create_conversation(self, title: str = DEFAULT_TITLE) -> Conversation:
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute("INSERT INTO conversations (title, created, updated, profile_id) VALUES (?, ?, ?, ?)",
                               (title, now, now, self.profile_id))
        return Conversation(cur.lastrowid, title, now, now)

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        rows = self.db.query(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n "
            "FROM conversations c WHERE c.id = ? AND c.deleted IS NULL AND c.profile_id = ?",
            (conversation_id, self.profile_id))
        return _conversation(rows[0]) if rows else None

    def list_conversations(self, *, search: str | None = None) -> list[Conversation]:
        """Newest first; ``search`` matches titles and message text, case-insensitively."""
        sql = ("SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n "
               "FROM conversations c WHERE c.deleted IS NULL AND c.profile_id = ?")
        params: list = [self.profile_id]
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            sql += (" AND (c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
                    "WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\'))")
            params += [pattern, pattern]
        sql += " ORDER BY c.updated DESC, c.id DESC"
        return [_conversation(r) for r in self.db.query(sql, params)]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (title.strip() or DEFAULT_TITLE, conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        """Soft delete: hidden at once, restorable with :meth:`restore_conversation` until purged."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE conversations SET deleted = ? WHERE id = ?", (time.time(), conversation_id))

    def restore_conversation(self, conversation_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE conversations SET deleted = NULL WHERE id = ?", (conversation_id,))

    def purge_deleted(self, *, older_than_s: float = 0.0) -> int:
        """Remove soft-deleted conversations for good; returns how many."""
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE deleted IS NOT NULL AND deleted <= ?",
                               (time.time() - older_than_s,))
        return cur.rowcount

    # -- messages ------------------------------------------------------------------------------
    def add_message(self, conversation_id: int, role: str, content: str, *,
                    attachments: Sequence[Attachment] = (), status: str = "complete",
                    meta: dict | None = None) -> Message:
        """Write one message (and its attachments) now, in one transaction."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        now = time.time()
        meta = dict(meta or {})
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, content, created, status, meta) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, now, status, json.dumps(meta)))
            message_id = cur.lastrowid
            stored = []
            for a in attachments:
                cur = conn.execute(
                    "INSERT INTO attachments (message_id, kind, mime, name, data, sha256, meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (message_id, a.kind, a.mime, a.name, sqlite3.Binary(a.data), a.sha256, json.dumps(a.meta)))
                stored.append(Attachment(a.kind, a.mime, a.data, a.name, dict(a.meta), cur.lastrowid))
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            if role == "user":
                conn.execute("UPDATE conversations SET title = ? WHERE id = ? AND title = ?",
                             (_title_from(content), conversation_id, DEFAULT_TITLE))
        return Message(message_id, conversation_id, role, content, now, status, meta, tuple(stored))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.query("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        by_message: dict[int, list[Attachment]] = {}
        for a in self.db.query(
                "SELECT a.* FROM attachments a JOIN messages m ON m.id = a.message_id "
                "WHERE m.conversation_id = ? ORDER BY a.id", (conversation_id,)):
            by_message.setdefault(a["message_id"], []).append(
                Attachment(a["kind"], a["mime"], bytes(a["data"]), a["name"], json.loads(a["meta"]), a["id"]))
        return [_message(r, tuple(by_message.get(r["id"], ()))) for r in rows]

    def message(self, message_id: int) -> Message | None:
        """One message of this profile's conversations (without attachments), or None."""
        rows = self.db.query("SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                             "WHERE m.id = ? AND c.profile_id = ?", (message_id, self.profile_id))
        return _message(rows[0]) if rows else None

    def update_meta(self, message_id: int, meta: dict) -> None:
        """Merge ``meta`` into a message's meta (feedback given on a reply, for example)."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT meta FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is not None:
                merged = {**json.loads(row["meta"]), **meta}
                conn.execute("UPDATE messages SET meta = ? WHERE id = ?", (json.dumps(merged), message_id))

    def turns(self, *, exclude_conversation: int | None = None, limit: int = 200) -> list[Turn]:
        """Completed replies with the question before them from this profile's other conversations,
        newest first."""
        rows = self.db.query(
            "SELECT a.id, a.conversation_id, a.content, (SELECT u.content FROM messages u "
            "WHERE u.conversation_id = a.conversation_id AND u.role = 'user' AND u.id < a.id "
            "ORDER BY u.id DESC LIMIT 1) AS question FROM messages a JOIN conversations c ON c.id = a.conversation_id "
            "WHERE a.role = 'assistant' AND a.status = 'complete' AND c.deleted IS NULL AND c.profile_id = ? "
            "AND c.id IS NOT ? ORDER BY a.id DESC LIMIT ?", (self.profile_id, exclude_conversation, limit))
        return [Turn(r["id"], r["conversation_id"], r["question"] or "", r["content"]) for r in rows if r["content"]]

    def truncate_from(self, conversation_id: int, message_id: int) -> int:
        """Delete ``message_id`` and every later message of the conversation (edit-and-resend,
        regenerate); returns how many were removed."""
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                               (conversation_id, message_id))
        return cur.rowcount


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    if len(line) <= TITLE_CHARS:
        return line or DEFAULT_TITLE
    return line[: TITLE_CHARS - 1].rsplit(" ", 1)[0] + "…"


def _message(row: sqlite3.Row, attachments: tuple[Attachment, ...] = ()) -> Message:
    return Message(row["id"], row["conversation_id"], row["role"], row["content"], row["created"], row["status"],
                   json.loads(row["meta"]), attachments)


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(row["id"], row["title"], row["created"], row["updated"], row["n"])
