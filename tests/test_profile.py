"""Profiles, memories and the conversation store's profile scoping: storage, migrations, isolation."""

import json
import sqlite3

import pytest

from mmchat.errors import MMChatError
from mmchat.profile import ProfileStore, profile_path
from db_faults import mark_newer_schema
from mmchat.store import ConversationStore

# The conversation schema as mmchat shipped it before profiles (store.py's _v1, user_version 1).
STORE_V1_SQL = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, deleted REAL);
CREATE TABLE messages (id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')), content TEXT NOT NULL,
    created REAL NOT NULL, status TEXT NOT NULL DEFAULT 'complete', meta TEXT NOT NULL DEFAULT '{}');
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE attachments (id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'audio')), mime TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
    data BLOB NOT NULL, sha256 TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE INDEX attachments_by_message ON attachments(message_id);
INSERT INTO conversations VALUES (1, 'Old chat', 1.0, 2.0, NULL);
INSERT INTO messages VALUES (1, 1, 'user', 'hello from v1', 1.0, 'complete', '{}');
INSERT INTO messages VALUES (2, 1, 'assistant', 'hi there', 2.0, 'complete', '{"model": "m"}');
PRAGMA user_version = 1;
"""


@pytest.fixture
def v1_database(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(STORE_V1_SQL)
    conn.close()
    return path


def test_v1_conversation_database_migrates_and_keeps_its_chats_in_the_first_profile(v1_database):
    store = ConversationStore(v1_database)
    assert store.db.conn.execute("PRAGMA user_version").fetchone()[0] == 2
    [old] = store.list_conversations()
    assert (old.id, old.title, old.message_count) == (1, "Old chat", 2)
    assert [m.content for m in store.messages(1)] == ["hello from v1", "hi there"]
    assert store.message(2).meta == {"model": "m"}
    store.use_profile(2)
    assert store.list_conversations() == [] and store.get_conversation(1) is None
    store.close()
    again = ConversationStore(v1_database)  # reopening does not migrate twice
    assert again.db.conn.execute("PRAGMA user_version").fetchone()[0] == 2 and len(again.list_conversations()) == 1
    again.close()


def test_profiles_are_isolated(tmp_path):
    profiles = ProfileStore(tmp_path / "p.sqlite3")
    home = profiles.active_profile()
    work = profiles.create_profile("work")
    chats = ConversationStore(tmp_path / "c.sqlite3", profile_id=home.id)
    mine = chats.create_conversation("home chat")
    chats.add_message(mine.id, "user", "home secret")
    chats.add_message(mine.id, "assistant", "noted")
    other = ConversationStore(tmp_path / "c.sqlite3", profile_id=work.id)
    assert other.list_conversations() == [] and other.get_conversation(mine.id) is None
    assert other.list_conversations(search="secret") == [] and other.turns() == []
    assert other.message(mine.id) is None
    theirs = other.create_conversation("work chat")
    assert [c.title for c in chats.list_conversations()] == ["home chat"]
    assert [c.id for c in other.list_conversations()] == [theirs.id]
    chats.close()
    other.close()


def test_active_profile_persists_and_fields_are_checked(tmp_path):
    path = tmp_path / "p.sqlite3"
    profiles = ProfileStore(path)
    assert [p.name for p in profiles.profiles()] == ["default"]
    work = profiles.create_profile("work")
    profiles.use_profile(work.id)
    profiles.update_profile(work.id, name="Ada", length="short", language="French")
    with pytest.raises(MMChatError, match="already"):
        profiles.create_profile("work")
    with pytest.raises(MMChatError, match="reply_length"):
        profiles.update_profile(work.id, reply_length="enormous")
    with pytest.raises(MMChatError, match="Unknown profile field"):
        profiles.update_profile(work.id, id="3")
    profiles.close()
    again = ProfileStore(path)
    active = again.active_profile()
    assert (active.name, active.display_name, active.reply_length, active.language) == ("work", "Ada", "short", "French")
    assert again.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_newer_profile_database_is_moved_aside(tmp_path):
    path = tmp_path / "p.sqlite3"
    mark_newer_schema(path)
    profiles = ProfileStore(path)
    assert profiles.notice and "newer" in profiles.notice
    assert [p.name for p in profiles.profiles()] == ["default"]
    assert list(tmp_path.glob("p.sqlite3.broken-*"))


def test_export_import_and_wipe(tmp_path):
    from mmchat.memory import MemoryService

    profiles = ProfileStore(tmp_path / "p.sqlite3")
    service = MemoryService(profiles, embed=None)
    service.embedding_note = "no embedder in this test"  # exact-text dedupe only
    profiles.update_profile(service.profile_id, tone="friendly")
    kept = service.add("I live in Oslo")
    gone = service.add("I'm allergic to cats")
    service.delete(gone.id)
    data = json.loads(json.dumps(profiles.export_profile(service.profile_id)))
    assert data["format"] == "mmchat-profile" and data["profile"]["tone"] == "friendly"
    assert [m["text"] for m in data["memories"]] == [kept.text] and len(data["deleted_hashes"]) == 1
    assert "cats" not in json.dumps(data)  # a deleted memory's text is gone, only its hash stays
    profiles.wipe(service.profile_id)
    assert service.memories(statuses=("pending", "active", "deleted")) == [] and service.profile.tone == ""
    assert profile_path().name == "profile.sqlite3"


def test_profile_and_memory_commands(capsys, tmp_path, data_dir):
    from mmchat.cli import main

    def run(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("profile", "set", "name", "Ada", "Lovelace")[0] == 0
    assert run("profile", "set", "length", "short")[0] == 0
    assert run("profile", "set", "length", "huge")[0] == 1
    code, out, _ = run("memory", "add", "I", "live", "in", "Oslo", "--pin")
    assert code == 0 and "📌 The user lives in Oslo." in out
    memory_id = int(out.split()[0])
    code, out, _ = run("profile", "show", "--json")
    shown = json.loads(out)
    assert (shown["display_name"], shown["reply_length"], shown["memories"]["active"]) == ("Ada Lovelace", "short", 1)
    export = tmp_path / "me.json"
    assert run("profile", "export", str(export))[0] == 0
    assert run("profile", "create", "work")[0] == 0
    assert run("memory", "list")[1] == "" and "* work" in run("profile", "list")[1]
    assert run("profile", "import", str(export))[1].startswith("imported 8 fields, 1 memories")
    assert "The user lives in Oslo." in run("memory", "list", "--search", "oslo")[1]
    assert run("profile", "use", "default")[0] == 0
    assert run("memory", "delete", str(memory_id))[0] == 0
    assert "(deleted)" in run("memory", "list", "--all")[1]
    assert run("memory", "approve", str(memory_id))[0] == 1
    assert run("profile", "wipe", "--yes")[0] == 0
    assert "Ada" not in run("profile", "show")[1]
    assert run("profile", "use", "nobody")[0] == 1
    assert run("profile", "import", str(data_dir / "missing.json"))[0] == 1


def test_feedback_command_changes_the_profile_and_marks_the_reply(capsys):
    from mmchat.cli import main

    store = ConversationStore()
    conversation = store.create_conversation().id
    store.add_message(conversation, "user", "Tell me about the Moon.")
    reply = store.add_message(conversation, "assistant", "The Moon is " + "very " * 80 + "far.")
    assert main(["feedback", str(reply.id), "down", "--correction", "too long, answer in French"]) == 0
    assert "reply_length = short; language = French" in capsys.readouterr().out
    assert store.message(reply.id).meta["feedback"]["rating"] == -1
    profile = ProfileStore().active_profile()
    assert (profile.reply_length, profile.language) == ("short", "French")
    assert main(["feedback", "999", "up"]) == 1
    store.close()


def test_repeated_thumbs_down_on_long_replies_shortens_them(tmp_path):
    from mmchat.feedback import learn
    from mmchat.memory import MemoryService

    memory = MemoryService(ProfileStore(tmp_path / "p.sqlite3"), embed=None)
    store = ConversationStore(tmp_path / "c.sqlite3")
    conversation = store.create_conversation().id
    replies = [store.add_message(conversation, "assistant", "word " * 100) for _ in range(3)]
    assert learn(memory, store, message_id=replies[0].id, rating=-1).changed == {}
    assert learn(memory, store, message_id=replies[1].id, rating=-1).changed == {"reply_length": "medium"}
    assert learn(memory, store, message_id=replies[2].id, rating=-1).changed == {"reply_length": "short"}
    assert [e.rating for e in memory.profiles.feedback_events(memory.profile_id)] == [-1, -1, -1]


def test_v1_profile_database_migrates_with_its_data(tmp_path):
    from mmchat.db import Database
    from mmchat.profile import MIGRATIONS

    path = tmp_path / "p.sqlite3"
    old = Database(path, MIGRATIONS[:1])  # the profile schema as first shipped (user_version 1)
    with old.transaction() as conn:
        conn.execute("INSERT INTO profiles (name, display_name, created) VALUES ('default', 'Ada', 1.0)")
        conn.execute("INSERT INTO memories (profile_id, text, norm_hash, created, status) "
                     "VALUES (1, 'The user lives in Oslo.', 'h', 1.0, 'active')")
    old.close()
    profiles = ProfileStore(path)
    assert profiles.db.conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert profiles.active_profile().display_name == "Ada"
    assert [m.text for m in profiles.memories(1)] == ["The user lives in Oslo."]
    assert profiles.turn_vectors(1, [1]) == {}
