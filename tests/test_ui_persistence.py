"""Persistence: each message is on disk when it is made, a restart shows everything as it was,
and a temporary chat leaves nothing on disk."""

import pytest
from PySide6.QtCore import Qt

from mmchat.store import ConversationStore
from mmchat_ui.chat_view import AssistantMessage
from mmchat_ui.demo import DemoEngine, DemoLLM
from ui_helpers import WAIT_MS, make_window, slow_llm, type_and_send, wait_reply, words  # noqa: F401

pytestmark = pytest.mark.gui


def test_user_message_is_on_disk_before_the_reply_ends(qtbot, make_window, data_dir):
    window = make_window(DemoEngine(slow_llm(words(200), 0.02)))
    type_and_send(qtbot, window, "Written at once?")
    qtbot.waitUntil(lambda: window.chat.last_reply() is not None and bool(window.chat.last_reply().text),
                    timeout=WAIT_MS)
    other = ConversationStore(data_dir / "mmchat.sqlite3")  # another connection, as after a crash
    conversation = other.list_conversations()[0]
    assert [m.content for m in other.messages(conversation.id)] == ["Written at once?"]
    other.close()
    window.stop()
    wait_reply(qtbot, window)


def test_restart_shows_the_same_conversations(qtbot, make_window, data_dir):
    replies = iter(["Reply A", "Reply B1", "Reply C"])
    window = make_window(DemoEngine(DemoLLM(lambda m: next(replies))))
    type_and_send(qtbot, window, "Conversation A")
    wait_reply(qtbot, window)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    type_and_send(qtbot, window, "Conversation B")
    wait_reply(qtbot, window)
    type_and_send(qtbot, window, "More in B")
    wait_reply(qtbot, window)
    before = window.sidebar.titles()
    shown_b = [(type(w).__name__, w.text) for w in window.chat.messages()]
    window.close()

    again = make_window()  # a new window over the same data folder
    assert again.sidebar.titles() == before == ["Conversation B", "Conversation A"]
    again.sidebar.list.itemClicked.emit(again.sidebar.item_for(again.sidebar.ids()[0]))
    assert [(type(w).__name__, w.text) for w in again.chat.messages()] == shown_b
    again.sidebar.list.itemClicked.emit(again.sidebar.item_for(again.sidebar.ids()[1]))
    assert [w.text for w in again.chat.messages()] == ["Conversation A", "Reply A"]


def test_stopped_reply_is_shown_as_stopped_after_restart(qtbot, make_window):
    window = make_window(DemoEngine(slow_llm(words(300), 0.02)))
    type_and_send(qtbot, window, "Stop me")
    qtbot.waitUntil(lambda: window.chat.last_reply() is not None and bool(window.chat.last_reply().text),
                    timeout=WAIT_MS)
    window.stop()
    partial = wait_reply(qtbot, window).text
    window.close()
    again = make_window()
    again.sidebar.list.itemClicked.emit(again.sidebar.item_for(again.sidebar.ids()[0]))
    reply = again.chat.last_reply()
    assert isinstance(reply, AssistantMessage) and reply.text == partial and reply.status.text() == "Stopped"


def test_temporary_chat_leaves_nothing_on_disk(qtbot, make_window, data_dir):
    window = make_window(DemoEngine(DemoLLM("An ephemeral answer")))
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_N,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert window.controller.current.temporary and window.chat.temp_banner.isVisible()
    assert window.title.text() == "Temporary chat"
    type_and_send(qtbot, window, "Top secret question")
    assert wait_reply(qtbot, window).text == "An ephemeral answer"
    type_and_send(qtbot, window, "A follow-up")  # the temporary chat keeps its history while open
    wait_reply(qtbot, window)
    assert [w.text for w in window.chat.messages()][::2] == ["Top secret question", "A follow-up"]
    assert window.sidebar.titles() == []
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)  # leave it
    assert window.chat.empty.isVisible()
    window.close()
    store = ConversationStore(data_dir / "mmchat.sqlite3")
    assert store.list_conversations() == []
    assert store.db.query("SELECT COUNT(*) AS n FROM messages")[0]["n"] == 0
    store.close()
    for path in data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"Top secret" not in data and b"ephemeral" not in data, path
