import sqlite3

import pytest

from mmchat.db import Database
from db_faults import mark_newer_schema
from mmchat.store import Attachment, ConversationStore


@pytest.fixture
def store(tmp_path):
    s = ConversationStore(tmp_path / "chat.sqlite3")
    yield s
    s.close()


def test_messages_survive_reopen_with_attachments(tmp_path):
    path = tmp_path / "chat.sqlite3"
    s = ConversationStore(path)
    conv = s.create_conversation()
    s.add_message(conv.id, "user", "Look at this picture of a red circle",
                  attachments=[Attachment("image", "image/png", b"\x89PNG fake", name="c.png", meta={"w": 2})])
    s.add_message(conv.id, "assistant", "A red circle.", meta={"model": "m"})
    s.close()

    again = ConversationStore(path)
    [c] = again.list_conversations()
    assert c.title == "Look at this picture of a red circle" and c.message_count == 2
    user, bot = again.messages(conv.id)
    assert (user.role, bot.role) == ("user", "assistant")
    assert user.attachments[0].data == b"\x89PNG fake" and user.attachments[0].meta == {"w": 2}
    assert bot.meta == {"model": "m"}
    assert again.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    again.close()


def test_search_matches_titles_and_message_text_literally(store):
    a = store.create_conversation("Holiday plans")
    b = store.create_conversation()
    store.add_message(b.id, "user", "What is 100% of 5_0?")
    assert [c.id for c in store.list_conversations(search="holiday")] == [a.id]
    assert [c.id for c in store.list_conversations(search="100%")] == [b.id]
    assert [c.id for c in store.list_conversations(search="5_0")] == [b.id]
    assert store.list_conversations(search="x%y") == []


def test_soft_delete_restore_and_purge(store):
    c = store.create_conversation("keep me")
    store.add_message(c.id, "user", "hi")
    store.delete_conversation(c.id)
    assert store.list_conversations() == []
    store.restore_conversation(c.id)
    assert [x.id for x in store.list_conversations()] == [c.id]
    store.delete_conversation(c.id)
    assert store.purge_deleted() == 1
    assert store.messages(c.id) == []


def test_truncate_from_removes_message_and_later(store):
    c = store.create_conversation()
    ids = [store.add_message(c.id, role, f"m{i}").id for i, role in enumerate(["user", "assistant", "user", "assistant"])]
    assert store.truncate_from(c.id, ids[2]) == 2
    assert [m.content for m in store.messages(c.id)] == ["m0", "m1"]


def test_bad_role_is_rejected(store):
    c = store.create_conversation()
    with pytest.raises(ValueError):
        store.add_message(c.id, "robot", "x")


def test_corrupt_file_is_moved_aside_not_deleted(tmp_path):
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    s = ConversationStore(path)
    assert s.notice and "moved to" in s.notice
    moved = list(tmp_path.glob("chat.sqlite3.broken-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not a database")
    c = s.create_conversation()
    assert s.add_message(c.id, "user", "works again").id
    s.close()


def test_newer_schema_is_moved_aside(tmp_path):
    path = tmp_path / "chat.sqlite3"
    mark_newer_schema(path)
    s = ConversationStore(path)
    assert "newer mmchat" in s.notice
    assert list(tmp_path.glob("chat.sqlite3.broken-*"))
    s.close()


def test_migrations_run_in_order_once(tmp_path):
    calls = []

    def m1(conn):
        calls.append(1)
        conn.execute("CREATE TABLE t (x)")

    def m2(conn):
        calls.append(2)
        conn.execute("ALTER TABLE t ADD COLUMN y")

    db = Database(tmp_path / "x.db", [m1])
    db.close()
    db = Database(tmp_path / "x.db", [m1, m2])
    assert calls == [1, 2]
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    Database(tmp_path / "x.db", [m1, m2]).close()
    assert calls == [1, 2]


def test_failed_migration_rolls_back(tmp_path):
    def good(conn):
        conn.execute("CREATE TABLE t (x)")

    def bad(conn):
        conn.execute("CREATE TABLE u (x)")
        raise RuntimeError("boom")

    Database(tmp_path / "x.db", [good]).close()
    with pytest.raises(RuntimeError):
        Database(tmp_path / "x.db", [good, bad])
    conn = sqlite3.connect(tmp_path / "x.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchall() == []
