"""The chat window with a scripted LLM: send, stream, Stop, Regenerate, Edit, conversations, safety."""

import re

import pytest
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QGuiApplication, QKeyEvent
from PySide6.QtWidgets import QAbstractItemView, QApplication, QLineEdit

import reliability
from hostile import HOSTILE

from mmchat.errors import MMChatError
from mmchat.probe import Probe
from mmchat.store import ConversationStore
from mmchat_ui import markdown
from mmchat_ui.chat_view import AssistantMessage, Notice, UserMessage
from mmchat_ui.demo import DemoEngine, DemoLLM
from mmchat_ui.help_dialog import HelpDialog
from mmchat_ui.rich_text import CodeBlock
from ui_helpers import WAIT_MS, click, make_window, slow_llm, type_and_send, wait_idle, wait_reply, words  # noqa: F401

pytestmark = pytest.mark.gui


def test_window_shows_before_anything_loads_and_lists_model_states(make_window):
    window = make_window()
    assert window.isVisible()
    assert "qwen2.5-coder-0.5b-instruct" in window.status.text_of("llm")
    assert "ready" in window.status.text_of("asr")
    assert "pretrained" in window.status.text_of("image") and not window.status.warning.isVisible()
    assert window.chat.empty.isVisible()


def test_an_untrained_image_encoder_is_flagged_in_the_status_bar(make_window):
    from mmchat.engine import SlotStatus

    window = make_window()
    window.status.update_status(SlotStatus("image", "clip-vit-b-32", "ready", "untrained"))
    assert window.status.warning.isVisible() and "untrained" in window.status.warning.text()
    window.status.update_status(SlotStatus("image", "efficientnet-lite0", "ready", "pretrained"))
    assert not window.status.warning.isVisible()


def test_status_bar_shows_loading_progress_and_errors(make_window):
    from mmchat.engine import SlotStatus

    window = make_window()
    window.status.update_status(SlotStatus("llm", "qwen2.5-coder-0.5b-instruct", "loading", "converting (one time)", 0.25))
    slot = window.status.slots["llm"]
    assert not slot.progress.isHidden() and slot.progress.value() == 250
    assert "converting" in window.status.text_of("llm")
    window.status.update_status(SlotStatus("asr", "whisper-base", "error", "The model package is not installed."))
    assert "failed" in window.status.text_of("asr")
    assert "not installed" in window.status.slots["asr"].label.toolTip()
    window.status.update_status(SlotStatus("llm", "qwen2.5-coder-0.5b-instruct", "ready"))
    assert slot.progress.isHidden()


def test_type_and_enter_streams_a_reply(qtbot, make_window):
    text = words(40)
    window = make_window(DemoEngine(slow_llm(text, 0.03)))
    type_and_send(qtbot, window, "Hello there")
    assert window.composer.text() == ""
    qtbot.waitUntil(lambda: window.chat.last_reply() is not None and 0 < len(window.chat.last_reply().text) < len(text),
                    timeout=WAIT_MS)  # part of the reply is on screen while it streams
    assert window.controller.busy and window.composer.send_button.objectName() == "stopButton"
    reply = wait_reply(qtbot, window)
    assert reply.text == text and not reply.streaming
    users = [w for w in window.chat.messages() if isinstance(w, UserMessage)]
    assert [u.text for u in users] == ["Hello there"]
    history = window.store.messages(window.controller.current.conversation_id)
    assert [(m.role, m.content) for m in history] == [("user", "Hello there"), ("assistant", text)]
    assert window.sidebar.titles() == ["Hello there"]
    assert window.title.text() == "Hello there"


def test_shift_enter_makes_a_new_line_and_does_not_send(qtbot, make_window):
    window = make_window()
    qtbot.keyClicks(window.composer.edit, "line one")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.composer.edit, "line two")
    assert window.composer.text() == "line one\nline two"
    assert not window.controller.busy and not window.chat.messages()


def test_stop_mid_stream_keeps_the_partial_reply(qtbot, make_window):
    full = words(300)
    window = make_window(DemoEngine(slow_llm(full, 0.02)))
    type_and_send(qtbot, window, "Tell me a long story")
    qtbot.waitUntil(lambda: window.chat.last_reply() is not None and len(window.chat.last_reply().text) > 20,
                    timeout=WAIT_MS)
    click(qtbot, window.composer.send_button)  # the Stop button while streaming
    reply = wait_reply(qtbot, window)
    assert 0 < len(reply.text) < len(full) and full.startswith(reply.text.strip())
    assert reply.status.text() == "Stopped" and not reply.status.isHidden()
    stored = window.store.messages(window.controller.current.conversation_id)[-1]
    assert stored.role == "assistant" and stored.status == "stopped" and stored.content == reply.text


def test_escape_stops_the_reply(qtbot, make_window):
    window = make_window(DemoEngine(slow_llm(words(300), 0.02)))
    type_and_send(qtbot, window, "Go on")
    qtbot.waitUntil(lambda: window.chat.last_reply() is not None and bool(window.chat.last_reply().text),
                    timeout=WAIT_MS)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Escape)
    reply = wait_reply(qtbot, window)
    assert reply.status.text() == "Stopped"


def test_regenerate_replaces_the_last_reply(qtbot, make_window):
    replies = iter(["First answer.", "Second, better answer."])
    window = make_window(DemoEngine(DemoLLM(lambda messages: next(replies))))
    type_and_send(qtbot, window, "Question?")
    assert wait_reply(qtbot, window).text == "First answer."
    last = window.chat.last_reply()
    assert last.regenerate_button.isVisibleTo(window)
    click(qtbot, last.regenerate_button)
    reply = wait_reply(qtbot, window)
    assert reply.text == "Second, better answer."
    assert len([w for w in window.chat.messages() if isinstance(w, AssistantMessage)]) == 1
    history = window.store.messages(window.controller.current.conversation_id)
    assert [(m.role, m.content) for m in history] == [("user", "Question?"), ("assistant", "Second, better answer.")]


def test_edit_and_resend_replaces_the_message_and_what_followed(qtbot, make_window):
    llm = DemoLLM(lambda messages: f"You said: {messages[-1]['content']}")
    window = make_window(DemoEngine(llm))
    type_and_send(qtbot, window, "Frist try")
    wait_reply(qtbot, window)
    type_and_send(qtbot, window, "Second message")
    wait_reply(qtbot, window)
    first = [w for w in window.chat.messages() if isinstance(w, UserMessage)][0]
    click(qtbot, first.edit_button)
    assert first.editor is not None
    first.edit_box.setPlainText("First try")
    qtbot.keyClick(first.edit_box, Qt.Key.Key_Return)
    reply = wait_reply(qtbot, window)
    assert reply.text == "You said: First try"
    shown = [(type(w).__name__, w.text) for w in window.chat.messages()]
    assert shown == [("UserMessage", "First try"), ("AssistantMessage", "You said: First try")]
    history = window.store.messages(window.controller.current.conversation_id)
    assert [m.content for m in history] == ["First try", "You said: First try"]


def test_escape_cancels_an_edit(qtbot, make_window):
    window = make_window()
    type_and_send(qtbot, window, "Keep me")
    wait_reply(qtbot, window)
    user = window.chat.messages()[0]
    click(qtbot, user.edit_button)
    user.edit_box.setPlainText("changed")
    user.edit_box.setFocus()
    qtbot.keyClick(user.edit_box, Qt.Key.Key_Escape)
    assert user.editor is None and user.label.text() == "Keep me"


def test_reply_markdown_is_rendered_and_raw_html_is_not(qtbot, make_window):
    hostile = ("**bold** <script>alert('x')</script> <img src='file:///etc/passwd'> "
               "[click](javascript:alert(1))\n\n```python\nprint('<b>hi</b>')\n```\n")
    window = make_window(DemoEngine(DemoLLM(hostile)))
    type_and_send(qtbot, window, "<b>not bold</b>")
    reply = wait_reply(qtbot, window)
    prose = reply.body.widgets()[0]
    assert "<script>alert('x')</script>" in prose.toPlainText()  # shown as text
    html = prose.toHtml()
    assert "<img" not in html and "<script" not in html
    assert "javascript:" not in "".join(a for a in html.split('href="')[1:])  # no link to it, only its text
    assert "font-weight" in html  # **bold** did render
    user = window.chat.messages()[0]
    assert user.label.textFormat() == Qt.TextFormat.PlainText and user.label.text() == "<b>not bold</b>"


@pytest.mark.reliability
def test_no_hostile_memory_text_renders_as_active_content(qtbot, make_window):
    """Issue 7's injection set, sent by the user and repeated by the model: shown, never active."""
    reliability.count(len(HOSTILE))
    window = make_window(DemoEngine(DemoLLM("\n\n".join(HOSTILE))))
    window.composer.edit.setPlainText("\n".join(HOSTILE))  # pasted: keyClicks cannot type U+202E
    window.composer.edit.setFocus()
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    reply = wait_reply(qtbot, window)
    html = "".join(w.toHtml() for w in reply.body.widgets() if hasattr(w, "toHtml"))
    assert "&lt;script&gt;" in html  # the text is there, as text
    tags = re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)([^>]*)>", html)
    assert not {name.lower() for name, _ in tags} & {"script", "img", "iframe", "svg", "object", "embed"}, tags
    assert not [attrs for _, attrs in tags if re.search(r"\bon[a-z]+\s*=", attrs, re.I)]
    links = [part.split('"', 1)[0] for part in html.split('href="')[1:]]
    assert all(markdown.is_safe_link(url) for url in links), links
    assert "![tracker]" not in html and "evil.example/pixel" not in links  # the image became no image
    user = window.chat.messages()[0]
    assert user.label.textFormat() == Qt.TextFormat.PlainText and user.label.text() == "\n".join(HOSTILE)


def test_code_blocks_are_highlighted_and_copyable(qtbot, make_window):
    code = "def add(a, b):\n    return a + b"
    window = make_window(DemoEngine(DemoLLM(f"Here:\n\n```python\n{code}\n```\n\nDone.")))
    type_and_send(qtbot, window, "Write add")
    reply = wait_reply(qtbot, window)
    blocks = reply.body.code_blocks()
    assert len(blocks) == 1 and blocks[0].language.text() == "python"
    assert "color" in blocks[0].body.toHtml()  # Pygments colours
    click(qtbot, blocks[0].copy_button)
    assert QGuiApplication.clipboard().text() == code
    assert blocks[0].copy_button.text() == "Copied"


def test_reply_copy_button_copies_the_markdown(qtbot, make_window):
    window = make_window(DemoEngine(DemoLLM("Plain *answer*")))
    type_and_send(qtbot, window, "Hi")
    reply = wait_reply(qtbot, window)
    click(qtbot, reply.copy_button)
    assert QGuiApplication.clipboard().text() == "Plain *answer*"


def test_model_error_mid_reply_is_shown_and_the_partial_reply_kept(qtbot, make_window):
    class Failing(DemoLLM):
        def stream(self, messages, **kwargs):
            yield "Half an "
            raise MMChatError("The model ran out of memory.")

    window = make_window(DemoEngine(Failing()))
    type_and_send(qtbot, window, "Hi")
    reply = wait_reply(qtbot, window)
    assert reply.text == "Half an "
    assert "out of memory" in reply.status.text()
    assert window.composer.isEnabled() and not window.controller.busy


def test_failure_before_anything_is_stored_gives_the_draft_back(qtbot, make_window):
    class NoWhisper(DemoEngine):
        @property
        def whisper(self):
            raise MMChatError("The speech model is not installed.")

    import numpy as np

    from mmchat_ui.composer import Draft

    window = make_window(NoWhisper())
    window.composer.set_text("about this clip")
    window.send(Draft(text="about this clip", audio=np.zeros(16_000, dtype=np.float32)))
    wait_idle(qtbot, window)
    assert window.composer.text() == "about this clip"
    assert window.composer.has_voice_clip
    assert "not installed" in window.composer.error.text() and window.composer.error.isVisible()
    assert window.sidebar.titles() == []


def test_notices_from_the_engine_appear_above_the_reply(qtbot, make_window, tmp_path):
    """Here OCR fails (its package is broken): the turn goes on with the rest and says so."""
    from PIL import Image

    from mmchat.errors import MMChatError

    class BrokenReader:
        def read(self, image):
            raise MMChatError("Text reading needs the rapidocr package, which does not import.")

    llm = DemoLLM("A red square.")
    window = make_window(DemoEngine(llm, text_reader=BrokenReader()))
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    window.composer.add_paths([path])
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    type_and_send(qtbot, window, "What is this?")
    wait_reply(qtbot, window)
    items = window.chat.items()
    notices = [w for w in items if isinstance(w, Notice)]
    assert notices and "reading text failed" in notices[0].text() and "rapidocr" in notices[0].text()
    assert items.index(notices[0]) < items.index(window.chat.last_reply())
    assert window.chat.last_reply().text == "A red square." and "red" in llm.prompts[-1][-1]["content"]


def test_conversations_new_switch_search_rename_delete_undo(qtbot, make_window):
    window = make_window(DemoEngine(DemoLLM(lambda m: f"Re: {m[-1]['content']}")))
    type_and_send(qtbot, window, "About cats")
    wait_reply(qtbot, window)
    cats = window.controller.current.conversation_id
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.chat.empty.isVisible() and window.title.text() == "New chat"
    type_and_send(qtbot, window, "About dogs")
    wait_reply(qtbot, window)
    assert window.sidebar.titles() == ["About dogs", "About cats"]

    window.sidebar.list.itemClicked.emit(window.sidebar.item_for(cats))
    assert [w.text for w in window.chat.messages()] == ["About cats", "Re: About cats"]
    assert window.title.text() == "About cats"

    window.sidebar.search.setText("dogs")
    qtbot.waitUntil(lambda: window.sidebar.titles() == ["About dogs"], timeout=WAIT_MS)
    window.sidebar.search.setText("Re: About cats")  # message text matches too
    qtbot.waitUntil(lambda: window.sidebar.titles() == ["About cats"], timeout=WAIT_MS)
    window.sidebar.search.clear()
    qtbot.waitUntil(lambda: len(window.sidebar.titles()) == 2, timeout=WAIT_MS)

    window.sidebar.rename(cats, "Feline facts")
    assert "Feline facts" in window.sidebar.titles()

    window.sidebar.delete(cats)
    assert window.sidebar.titles() == ["About dogs"]
    assert window.chat.empty.isVisible()  # the open conversation was the deleted one
    assert window.sidebar.undo_bar.isVisible()
    click(qtbot, window.sidebar.undo_button)
    assert sorted(window.sidebar.titles()) == ["About dogs", "Feline facts"]
    assert not window.sidebar.undo_bar.isVisible()


def test_rename_inline_with_f2(qtbot, make_window):
    window = make_window()
    type_and_send(qtbot, window, "Old title")
    wait_reply(qtbot, window)
    item = window.sidebar.item_for(window.controller.current.conversation_id)
    window.sidebar.list.setCurrentItem(item)
    window.sidebar.list.setFocus()
    qtbot.keyClick(window.sidebar.list, Qt.Key.Key_F2)
    qtbot.waitUntil(lambda: isinstance(QApplication.focusWidget(), QLineEdit)
                    and QApplication.focusWidget() is not window.sidebar.search, timeout=WAIT_MS)
    editor = QApplication.focusWidget()
    editor.selectAll()
    qtbot.keyClicks(editor, "New title")
    window.sidebar.refresh()  # a reply ending meanwhile refreshes the list: the edit must survive it
    assert window.sidebar.list.state() == QAbstractItemView.State.EditingState
    QApplication.sendEvent(editor, QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier))
    qtbot.waitUntil(lambda: window.sidebar.titles() == ["New title"], timeout=WAIT_MS)
    assert window.store.get_conversation(window.controller.current.conversation_id).title == "New title"


def test_deleted_conversations_are_purged_at_exit(qtbot, make_window, data_dir):
    window = make_window()
    type_and_send(qtbot, window, "Delete me")
    wait_reply(qtbot, window)
    window.sidebar.delete(window.controller.current.conversation_id)
    window.close()
    store = ConversationStore(data_dir / "mmchat.sqlite3")
    assert store.db.query("SELECT COUNT(*) AS n FROM conversations")[0]["n"] == 0


def test_help_lists_the_shortcuts(qtbot, make_window):
    window = make_window()
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_F1)
    dialog = window._help
    assert isinstance(dialog, HelpDialog) and dialog.isVisible()
    keys = [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())]
    for expected in ("Enter", "Shift+Enter", "Esc", "Hold F8", "Ctrl+N", "Ctrl+V", "Ctrl+R"):
        assert expected in keys
    dialog.close()


def test_suggestion_fills_the_composer(qtbot, make_window):
    window = make_window()
    button = window.chat.empty.findChildren(type(window.sidebar.new_button))[0]
    click(qtbot, button)
    assert window.composer.text() and not window.controller.busy


def test_closing_mid_generation_shuts_down_cleanly(qtbot, make_window):
    llm = slow_llm(words(2000), 0.02)
    window = make_window(DemoEngine(llm))
    type_and_send(qtbot, window, "Long one")
    qtbot.waitUntil(lambda: window.chat.last_reply() is not None and bool(window.chat.last_reply().text),
                    timeout=WAIT_MS)
    window.close()  # stops the reply and waits for the pool
    assert window.runner.pool.activeThreadCount() == 0
    store = ConversationStore(window.store.db.path)
    history = store.messages(store.list_conversations()[0].id)
    assert history[-1].role == "assistant" and history[-1].status == "stopped" and history[-1].content


def test_no_microphone_and_no_speakers_disable_their_buttons_with_the_reason(qtbot, make_window):
    window = make_window(microphone=Probe(False, "PortAudio is not installed"),
                         speakers=Probe(False, "no speakers or headphones were found"))
    qtbot.waitUntil(lambda: "PortAudio" in window.composer.mic_button.toolTip(), timeout=WAIT_MS)
    assert not window.composer.mic_button.isEnabled()
    assert not window.speak_button.isEnabled() and "no speakers" in window.speak_button.toolTip()


@pytest.mark.parametrize("text", ["x" * 5000, "```\nunclosed fence", "| a |\n|---|\n| <b> |", "\x00\x01 odd"])
def test_markdown_view_handles_odd_text(qtbot, text):
    from mmchat_ui.rich_text import MarkdownView

    view = MarkdownView(text)
    qtbot.addWidget(view)
    assert view.text == text
    rendered = "".join(w.toPlainText() if not isinstance(w, CodeBlock) else w.code for w in view.widgets())
    assert rendered.strip() or not text.strip()


def test_messages_show_plain_text_while_the_markdown_warm_up_runs(qtbot, monkeypatch):
    """The GUI thread must not import markdown-it while the warm-up worker is importing it (it
    would wait on the import lock: a 200 ms stall when the first message came early)."""
    from mmchat_ui import rich_text

    monkeypatch.setattr(markdown, "warming_up", lambda: True)
    monkeypatch.setattr(markdown, "render", lambda *a, **k: pytest.fail("rendered during the warm-up"))
    view = rich_text.MarkdownView("Some **bold** <b>text</b>\nand a second line")
    qtbot.addWidget(view)
    (shown,) = view.widgets()
    assert shown.toPlainText() == "Some **bold** <b>text</b>\nand a second line"
    monkeypatch.undo()
    rich_text.render_deferred()
    (shown,) = view.widgets()
    assert shown.toPlainText() == "Some bold <b>text</b>\nand a second line"
    assert view.text == "Some **bold** <b>text</b>\nand a second line"


def test_warm_up_reports_its_state():
    markdown.warm_up()
    assert not markdown.warming_up()


def test_markdown_render_is_incremental_while_streaming(qtbot):
    from mmchat_ui.rich_text import MarkdownView

    view = MarkdownView("Intro\n\n```py\nx = 1")
    qtbot.addWidget(view)
    first = view.widgets()
    view.set_markdown("Intro\n\n```py\nx = 1\ny = 2\n```\n\nAfter")
    assert view.widgets()[:2] == first  # same widgets updated in place, no flicker
    assert view.code_blocks()[0].code == "x = 1\ny = 2"
    assert len(view.widgets()) == 3


def test_speakable_text_names_code_instead_of_reading_it():
    spoken = markdown.speakable("Here is **the** answer\n\n```python\nprint(1)\n```\n\n- one\n- two")
    assert "print" not in spoken and "(code block)" in spoken
    assert spoken.startswith("Here is the answer.")
