"""Start-up with an unusable conversation database (corrupt, truncated, read-only, newer schema):
the store and the CLI still start, the old file is moved aside untouched, and the notice says where.
A full disk or an I/O error on write is an MMChatError, and nothing stored before is damaged."""

import sqlite3

import pytest

import reliability
from db_faults import KINDS, MESSAGES, filled_database, make_unusable, moved_file
from mmchat import cli
from mmchat.chat import ChatSession
from mmchat.errors import MMChatError
from mmchat.store import ConversationStore

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("kind", KINDS)
def test_store_starts_and_moves_the_old_file_aside(kind, tmp_path, monkeypatch):
    path = tmp_path / "mmchat.sqlite3"
    original = make_unusable(kind, path, monkeypatch)
    store = ConversationStore(path)
    moved = moved_file(path)
    assert moved.read_bytes() == original  # never deleted, never changed
    assert store.notice is not None and str(moved) in store.notice
    assert store.list_conversations() == []  # a new, empty database ...
    conversation = store.create_conversation().id  # ... that works
    store.add_message(conversation, "user", "hello again")
    store.close()
    assert ConversationStore(path).messages(conversation)[0].content == "hello again"


@pytest.mark.parametrize("kind", KINDS)
def test_cli_starts_and_says_where_the_old_file_went(kind, data_dir, monkeypatch, capsys):
    path = data_dir / "mmchat.sqlite3"
    make_unusable(kind, path, monkeypatch)
    assert cli.main(["history"]) == 0
    err = capsys.readouterr().err
    assert "could not be used" in err and str(moved_file(path)) in err


def test_unwritable_data_folder_is_a_clear_error(tmp_path, monkeypatch):
    """When even a new database cannot be created, that is an MMChatError, not a traceback."""
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    with pytest.raises(MMChatError, match="data folder"):
        ConversationStore(blocker / "mmchat.sqlite3")


def _full_store(tmp_path) -> tuple[ConversationStore, int, list]:
    path = tmp_path / "full.sqlite3"
    filled_database(path)
    store = ConversationStore(path)
    conversation = store.list_conversations()[0].id
    before = store.messages(conversation)
    pages = store.db.query("PRAGMA page_count")[0][0]
    store.db.query(f"PRAGMA max_page_count = {pages}")  # the disk is now full
    return store, conversation, before


def test_disk_full_on_write_is_an_error_and_damages_nothing(tmp_path):
    store, conversation, before = _full_store(tmp_path)
    with pytest.raises(MMChatError, match="full") as caught:
        store.add_message(conversation, "user", "y" * 50_000)
    assert "free disk space" in str(caught.value)
    with pytest.raises(MMChatError, match="full"):  # as ChatSession.send meets it: nothing is yielded
        next(ChatSession(object(), store, conversation).send("z" * 50_000))
    assert store.messages(conversation) == before
    assert store.db.query("PRAGMA integrity_check")[0][0] == "ok"
    store.db.query("PRAGMA max_page_count = 1073741823")  # space again: writing works
    store.add_message(conversation, "user", "after the disk was freed")
    assert len(store.messages(conversation)) == MESSAGES + 1
    store.close()


@pytest.mark.parametrize("message", ["database or disk is full", "disk I/O error"])
def test_storage_errors_inside_a_transaction_become_mmchat_errors(tmp_path, message):
    store = ConversationStore(tmp_path / "x.sqlite3")
    with pytest.raises(MMChatError, match="Could not save"):
        with store.db.transaction():
            raise sqlite3.OperationalError(message)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # a bug stays a bug
        with store.db.transaction() as conn:
            conn.execute("SELECT * FROM no_such_table")
    assert store.create_conversation().id == 1  # the connection is usable afterwards
    reliability.count()
