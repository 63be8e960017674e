"""Local user profiles: who the user is, how they like replies, what the assistant may remember.

One SQLite file (``profile.sqlite3`` next to the conversation database) holds several profiles, the
memories of each (text, source message, created, last used, pinned, status) and the feedback given
on replies. Memories move ``pending`` → ``active`` (confirmed) → ``superseded`` (a newer fact of the
same slot replaced it) or ``deleted``. A deleted memory is a tombstone: its text is wiped, but the
hash of its normalised text and its embedding stay so the same fact is never stored again.

This module is storage only; extraction, dedupe and retrieval live in :mod:`mmchat.memory`,
learning from feedback in :mod:`mmchat.feedback`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmchat import paths
from mmchat.db import Database, run_script
from mmchat.errors import MMChatError

FILE_NAME = "profile.sqlite3"
DEFAULT_PROFILE = "default"
MEMORY_STATUSES = ("pending", "active", "superseded", "deleted")
MEMORY_MODES = ("ask", "auto", "off")  # new memories: confirm each / store unless flagged / never propose
REPLY_LENGTHS = ("", "short", "medium", "long")  # "" = no preference
EXPORT_FORMAT = "mmchat-profile"
EXPORT_VERSION = 1
MAX_FIELD_CHARS = 2_000  # per profile text field


def _v1(conn: sqlite3.Connection) -> None:
    run_script(conn, """
        CREATE TABLE profiles (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            display_name TEXT NOT NULL DEFAULT '',
            language TEXT NOT NULL DEFAULT '',
            reply_length TEXT NOT NULL DEFAULT '',
            tone TEXT NOT NULL DEFAULT '',
            expertise TEXT NOT NULL DEFAULT '',
            interests TEXT NOT NULL DEFAULT '',
            custom_instructions TEXT NOT NULL DEFAULT '',
            memory_mode TEXT NOT NULL DEFAULT 'ask',
            created REAL NOT NULL
        );
        CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE memories (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            norm_hash TEXT NOT NULL,
            slot TEXT,
            origin TEXT NOT NULL DEFAULT 'manual',
            source_message_id INTEGER,
            created REAL NOT NULL,
            last_used REAL,
            pinned INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'superseded', 'deleted')),
            flags TEXT NOT NULL DEFAULT '[]',
            embedding BLOB
        );
        CREATE INDEX memories_by_profile ON memories(profile_id, status);
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            message_id INTEGER NOT NULL,
            rating INTEGER NOT NULL CHECK (rating IN (-1, 0, 1)),
            correction TEXT,
            words INTEGER NOT NULL DEFAULT 0,
            applied TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL
        );
        CREATE INDEX feedback_by_profile ON feedback(profile_id, id)
    """)


def _v2(conn: sqlite3.Connection) -> None:
    """Embeddings of earlier (question, reply) turns, so each start does not embed them again.
    ``digest`` is the sha256 of the embedded text: a changed or replaced message is re-embedded."""
    run_script(conn, """
        CREATE TABLE turn_vectors (
            message_id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            digest TEXT NOT NULL,
            embedding BLOB NOT NULL
        )
    """)


MIGRATIONS = (_v1, _v2)


@dataclass(frozen=True)
class Profile:
    id: int
    name: str  # the profile's own name ("default", "work")
    display_name: str = ""  # what the assistant calls the user
    language: str = ""  # reply language, e.g. "French" ("" = the user's)
    reply_length: str = ""  # one of REPLY_LENGTHS
    tone: str = ""  # "friendly", "formal", ...
    expertise: str = ""
    interests: str = ""
    custom_instructions: str = ""
    memory_mode: str = "ask"  # one of MEMORY_MODES
    created: float = 0.0


# The fields `mmchat profile set KEY VALUE` and the profile editor may change (name has its own rules).
EDITABLE_FIELDS = ("display_name", "language", "reply_length", "tone", "expertise", "interests",
                   "custom_instructions", "memory_mode")
FIELD_ALIASES = {"name": "display_name", "length": "reply_length", "instructions": "custom_instructions",
                 "memory": "memory_mode"}


@dataclass(frozen=True)
class Memory:
    id: int
    profile_id: int
    text: str  # "" for a deleted memory (tombstone)
    status: str  # one of MEMORY_STATUSES
    slot: str | None = None  # "name", "location", "allergy", ... when a pattern gave one
    origin: str = "manual"  # "pattern", "manual", "correction", "import"
    source_message_id: int | None = None
    created: float = 0.0
    last_used: float | None = None
    pinned: bool = False
    flags: tuple[str, ...] = ()  # why the text looks like an instruction (never auto-stored then)


@dataclass(frozen=True)
class FeedbackEvent:
    id: int
    message_id: int
    rating: int  # +1, -1 or 0 (a correction without a rating)
    correction: str | None
    words: int  # length of the rated reply
    applied: dict  # what it changed: {"reply_length": "short", "memory": 7, ...}
    created: float


def norm_hash(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def profile_path() -> Path:
    return paths.data_dir() / FILE_NAME


class ProfileStore:
    """Profiles, memories and feedback in one SQLite file (``":memory:"`` for a throwaway store)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.db = Database(path if path is not None else profile_path(), MIGRATIONS)
        if not self.db.query("SELECT 1 FROM profiles LIMIT 1"):
            self.create_profile(DEFAULT_PROFILE)

    @property
    def notice(self) -> str | None:
        return self.db.notice

    def close(self) -> None:
        self.db.close()

    # -- profiles --------------------------------------------------------------------------------
    def create_profile(self, name: str) -> Profile:
        name = _profile_name(name)
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM profiles WHERE name = ?", (name,)).fetchone():
                raise MMChatError(f"There is already a profile called {name!r}.", hint="See `mmchat profile list`.")
            cur = conn.execute("INSERT INTO profiles (name, created) VALUES (?, ?)", (name, time.time()))
        return self.get_profile(cur.lastrowid)

    def profiles(self) -> list[Profile]:
        return [_profile(r) for r in self.db.query("SELECT * FROM profiles ORDER BY id")]

    def get_profile(self, profile_id: int) -> Profile:
        rows = self.db.query("SELECT * FROM profiles WHERE id = ?", (profile_id,))
        if not rows:
            raise MMChatError(f"There is no profile {profile_id}.", hint="See `mmchat profile list`.")
        return _profile(rows[0])

    def find_profile(self, name: str) -> Profile:
        rows = self.db.query("SELECT * FROM profiles WHERE name = ?", (name.strip(),))
        if not rows:
            raise MMChatError(f"There is no profile called {name!r}.",
                              hint="See `mmchat profile list`, or make it with `mmchat profile create NAME`.")
        return _profile(rows[0])

    def active_profile(self) -> Profile:
        """The profile in use (the first one until another is chosen)."""
        rows = self.db.query("SELECT p.* FROM profiles p JOIN state s ON s.key = 'active_profile' "
                             "AND CAST(s.value AS INTEGER) = p.id")
        return _profile(rows[0]) if rows else self.profiles()[0]

    def use_profile(self, profile_id: int) -> Profile:
        profile = self.get_profile(profile_id)
        with self.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('active_profile', ?)", (str(profile.id),))
        return profile

    def update_profile(self, profile_id: int, **fields: str) -> Profile:
        """Change profile fields (keys from :data:`EDITABLE_FIELDS` or their aliases); values are checked."""
        checked = {}
        for key, value in fields.items():
            key = FIELD_ALIASES.get(key, key)
            checked[key] = _field_value(key, value)
        if checked:
            assignments = ", ".join(f"{key} = ?" for key in checked)  # keys are from EDITABLE_FIELDS only
            with self.db.transaction() as conn:
                conn.execute(f"UPDATE profiles SET {assignments} WHERE id = ?", (*checked.values(), profile_id))
        return self.get_profile(profile_id)

    # -- memories --------------------------------------------------------------------------------
    def insert_memory(self, profile_id: int, *, text: str, normalised: str, status: str, slot: str | None = None,
                      origin: str = "manual", source_message_id: int | None = None, pinned: bool = False,
                      flags: tuple[str, ...] = (), embedding: np.ndarray | None = None) -> Memory:
        if status not in MEMORY_STATUSES:
            raise ValueError(f"status must be one of {MEMORY_STATUSES}, not {status!r}")
        blob = None if embedding is None else np.asarray(embedding, dtype=np.float32).tobytes()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO memories (profile_id, text, norm_hash, slot, origin, source_message_id, created, pinned, "
                "status, flags, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (profile_id, text, norm_hash(normalised), slot, origin, source_message_id, time.time(), int(pinned),
                 status, json.dumps(list(flags)), blob))
        return self.memory(cur.lastrowid)

    def memory(self, memory_id: int) -> Memory:
        rows = self.db.query("SELECT * FROM memories WHERE id = ?", (memory_id,))
        if not rows:
            raise MMChatError(f"There is no memory {memory_id}.", hint="See `mmchat memory list`.")
        return _memory(rows[0])

    def memories(self, profile_id: int, *, statuses: tuple[str, ...] = ("pending", "active"),
                 search: str | None = None) -> list[Memory]:
        """Memories of a profile with one of ``statuses``, pinned first, then newest first."""
        marks = ", ".join("?" for _ in statuses)
        sql = f"SELECT * FROM memories WHERE profile_id = ? AND status IN ({marks})"
        params: list = [profile_id, *statuses]
        if search:
            sql += " AND text LIKE ? ESCAPE '\\'"
            params.append("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return [_memory(r) for r in self.db.query(sql + " ORDER BY pinned DESC, id DESC", params)]

    def vectors(self, profile_id: int, *, statuses: tuple[str, ...]) -> tuple[list[Memory], np.ndarray]:
        """Memories with an embedding and their ``(n, dim)`` float32 matrix (rows in the same order)."""
        marks = ", ".join("?" for _ in statuses)
        rows = self.db.query(f"SELECT * FROM memories WHERE profile_id = ? AND status IN ({marks}) "
                             "AND embedding IS NOT NULL ORDER BY id", (profile_id, *statuses))
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [_memory(r) for r in rows], np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])

    def vector(self, memory_id: int) -> np.ndarray | None:
        rows = self.db.query("SELECT embedding FROM memories WHERE id = ?", (memory_id,))
        if not rows or rows[0]["embedding"] is None:
            return None
        return np.frombuffer(rows[0]["embedding"], dtype=np.float32)

    def find_by_hash(self, profile_id: int, normalised: str, *, statuses: tuple[str, ...]) -> Memory | None:
        marks = ", ".join("?" for _ in statuses)
        rows = self.db.query(f"SELECT * FROM memories WHERE profile_id = ? AND norm_hash = ? AND status IN ({marks}) "
                             "ORDER BY id DESC LIMIT 1", (profile_id, norm_hash(normalised), *statuses))
        return _memory(rows[0]) if rows else None

    def set_memory(self, memory_id: int, *, status: str | None = None, pinned: bool | None = None,
                   text: str | None = None, normalised: str | None = None,
                   embedding: np.ndarray | None = None) -> Memory:
        """Change one memory. Deleting wipes its text (the hash and embedding stay, as a tombstone)."""
        changes: dict = {}
        if status is not None:
            if status not in MEMORY_STATUSES:
                raise ValueError(f"status must be one of {MEMORY_STATUSES}, not {status!r}")
            changes["status"] = status
            if status == "deleted":
                changes.update(text="", pinned=0, flags="[]")
        if pinned is not None:
            changes["pinned"] = int(pinned)
        if text is not None:
            changes.update(text=text, norm_hash=norm_hash(normalised or text))
        if embedding is not None:
            changes["embedding"] = np.asarray(embedding, dtype=np.float32).tobytes()
        if changes:
            assignments = ", ".join(f"{key} = ?" for key in changes)  # keys are fixed above
            with self.db.transaction() as conn:
                conn.execute(f"UPDATE memories SET {assignments} WHERE id = ?", (*changes.values(), memory_id))
        return self.memory(memory_id)

    def mark_used(self, memory_ids: list[int]) -> None:
        if memory_ids:
            with self.db.transaction() as conn:
                conn.executemany("UPDATE memories SET last_used = ? WHERE id = ?",
                                 [(time.time(), i) for i in memory_ids])

    # -- embeddings of earlier turns ---------------------------------------------------------------
    def turn_vectors(self, profile_id: int, message_ids: list[int]) -> dict[int, tuple[str, np.ndarray]]:
        found = {}
        for start in range(0, len(message_ids), 500):  # SQLite's bound-parameter limit
            chunk = message_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            for r in self.db.query(f"SELECT * FROM turn_vectors WHERE profile_id = ? AND message_id IN ({marks})",
                                   (profile_id, *chunk)):
                found[r["message_id"]] = (r["digest"], np.frombuffer(r["embedding"], dtype=np.float32))
        return found

    def put_turn_vectors(self, profile_id: int, rows: list[tuple[int, str, np.ndarray]]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO turn_vectors (message_id, profile_id, digest, embedding) "
                             "VALUES (?, ?, ?, ?)", [(i, profile_id, d, np.asarray(v, dtype=np.float32).tobytes())
                                                     for i, d, v in rows])

    # -- feedback --------------------------------------------------------------------------------
    def add_feedback(self, profile_id: int, *, message_id: int, rating: int, correction: str | None,
                     words: int, applied: dict) -> FeedbackEvent:
        with self.db.transaction() as conn:
            cur = conn.execute("INSERT INTO feedback (profile_id, message_id, rating, correction, words, applied, "
                               "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (profile_id, message_id, rating, correction, words, json.dumps(applied), time.time()))
        return self.feedback_events(profile_id, after=cur.lastrowid - 1)[0]

    def feedback_events(self, profile_id: int, *, after: int = 0, limit: int = 1000) -> list[FeedbackEvent]:
        """Oldest first."""
        rows = self.db.query("SELECT * FROM feedback WHERE profile_id = ? AND id > ? ORDER BY id LIMIT ?",
                             (profile_id, after, limit))
        return [FeedbackEvent(r["id"], r["message_id"], r["rating"], r["correction"], r["words"],
                              json.loads(r["applied"]), r["created"]) for r in rows]

    # -- export, import, wipe --------------------------------------------------------------------
    def export_profile(self, profile_id: int) -> dict:
        """The profile, its memories (tombstones as hashes only) and feedback, as JSON-ready data."""
        profile = dataclasses.asdict(self.get_profile(profile_id))
        memories = [{k: v for k, v in dataclasses.asdict(m).items() if k not in ("id", "profile_id")}
                    for m in self.memories(profile_id, statuses=("pending", "active"))]
        tombstones = [r["norm_hash"] for r in self.db.query(
            "SELECT norm_hash FROM memories WHERE profile_id = ? AND status = 'deleted'", (profile_id,))]
        feedback = [dataclasses.asdict(f) for f in self.feedback_events(profile_id)]
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported": time.time(),
                "profile": {k: profile[k] for k in ("name", *EDITABLE_FIELDS)},
                "memories": memories, "deleted_hashes": tombstones, "feedback": feedback}

    def import_tombstones(self, profile_id: int, hashes: list[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("INSERT INTO memories (profile_id, text, norm_hash, created, status) "
                             "VALUES (?, '', ?, ?, 'deleted')", [(profile_id, h, time.time()) for h in hashes])

    def wipe(self, profile_id: int) -> None:
        """Forget everything about a profile: memories (tombstones too), feedback and its fields."""
        blank = {key: "" for key in EDITABLE_FIELDS if key != "memory_mode"}
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM memories WHERE profile_id = ?", (profile_id,))
            conn.execute("DELETE FROM feedback WHERE profile_id = ?", (profile_id,))
            conn.execute("DELETE FROM turn_vectors WHERE profile_id = ?", (profile_id,))
        self.update_profile(profile_id, **blank)


def _profile_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not name or len(name) > 64 or "\x00" in name:
        raise MMChatError("A profile name must be 1–64 characters.")
    return name


def _field_value(key: str, value) -> str:
    if key not in EDITABLE_FIELDS:
        raise MMChatError(f"Unknown profile field {key!r}.",
                          hint="Fields: " + ", ".join(EDITABLE_FIELDS) + " (also: name, length, instructions).")
    value = " ".join(str(value).split()) if key != "custom_instructions" else str(value).strip()
    if len(value) > MAX_FIELD_CHARS or "\x00" in value:
        raise MMChatError(f"The value for {key} is too long (at most {MAX_FIELD_CHARS} characters).")
    if key == "reply_length" and value.lower() not in REPLY_LENGTHS:
        raise MMChatError(f"reply_length must be one of: {', '.join(v for v in REPLY_LENGTHS if v)} (or empty).")
    if key == "memory_mode" and value.lower() not in MEMORY_MODES:
        raise MMChatError(f"memory_mode must be one of: {', '.join(MEMORY_MODES)}.")
    return value.lower() if key in ("reply_length", "memory_mode") else value


def _profile(row: sqlite3.Row) -> Profile:
    return Profile(**{f.name: row[f.name] for f in dataclasses.fields(Profile)})


def _memory(row: sqlite3.Row) -> Memory:
    return Memory(row["id"], row["profile_id"], row["text"], row["status"], row["slot"], row["origin"],
                  row["source_message_id"], row["created"], row["last_used"], bool(row["pinned"]),
                  tuple(json.loads(row["flags"])))
