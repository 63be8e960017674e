"""Images in the window: drop (file URL, image data), paste, remove, bad and oversized files, viewer."""

import io

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication, QImage
from PySide6.QtWidgets import QApplication

import mmchat.images
from mmchat_ui.chat_view import UserMessage
from mmchat_ui.demo import DemoEngine, DemoLLM
from mmchat_ui.media_widgets import ImageViewer
from ui_helpers import WAIT_MS, click, make_window, type_and_send, wait_reply  # noqa: F401

pytestmark = pytest.mark.gui


@pytest.fixture
def red_png(tmp_path):
    path = tmp_path / "red square.png"
    image = Image.new("RGB", (120, 80), (220, 30, 30))
    image.paste((30, 30, 220), (40, 20, 80, 60))
    image.save(path)
    return path


def file_mime(*paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def image_mime(width=64, height=48, colour=Qt.GlobalColor.green) -> QMimeData:
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(colour)
    mime = QMimeData()
    mime.setImageData(image)
    return mime


def drop(widget, mime: QMimeData) -> bool:
    """Drag ``mime`` over ``widget`` and drop it, as the window system would."""
    centre = QPoint(widget.width() // 2, widget.height() // 2)
    enter = QDragEnterEvent(QPointF(centre), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(QPointF(centre), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)
    return event.isAccepted()


def test_drop_a_file_on_the_window_then_send_it(qtbot, make_window, red_png):
    llm = DemoLLM("I see an image.")
    window = make_window(DemoEngine(llm))
    assert drop(window, file_mime(red_png))
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    assert window.composer.attachments.isVisible()
    assert window.composer.images[0].name == "red square.png"
    type_and_send(qtbot, window, "What is this?")
    reply = wait_reply(qtbot, window)
    assert reply.text == "I see an image."
    assert window.composer.images == [] and not window.composer.attachments.isVisible()
    user = [w for w in window.chat.messages() if isinstance(w, UserMessage)][0]
    assert len(user.thumbnails) == 1 and user.text == "What is this?"
    assert "<image-data id=1>" in llm.prompts[-1][-1]["content"]  # the image's evidence reached the prompt
    stored = window.store.messages(window.controller.current.conversation_id)[0]
    assert [a.kind for a in stored.attachments] == ["image"]
    assert Image.open(io.BytesIO(stored.attachments[0].data)).size == (120, 80)


def test_the_media_encoder_is_built_only_when_a_turn_has_media(qtbot, make_window, red_png, monkeypatch):
    """A text-only chat never waits for the image encoder (it took 2.5 s of the first reply)."""
    import mmchat.media

    built = []
    real = mmchat.media.media_encoder
    monkeypatch.setattr(mmchat.media, "media_encoder", lambda *a, **k: built.append(k) or real(*a, **k))
    window = make_window(DemoEngine(DemoLLM("Fine.")))
    type_and_send(qtbot, window, "Hello there")
    assert wait_reply(qtbot, window).text == "Fine."
    assert built == []
    assert drop(window, file_mime(red_png))
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    type_and_send(qtbot, window, "And this?")
    assert wait_reply(qtbot, window).text == "Fine."
    assert built == [{"image": True, "audio": True}]  # once, with the settings' fusion switches


def test_drop_image_data_on_the_composer(qtbot, make_window):
    window = make_window()
    assert drop(window.composer, image_mime(64, 48))
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    pending = window.composer.images[0]
    assert pending.image.size == (64, 48) and pending.image.getpixel((5, 5)) == (0, 255, 0)


def test_drop_on_the_text_box_adds_the_image_not_its_path(qtbot, make_window, red_png):
    window = make_window()
    window.composer.edit.insertFromMimeData(file_mime(red_png))  # what a drop on the text box ends in
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    assert window.composer.text() == ""


def test_paste_image_data_with_ctrl_v(qtbot, make_window):
    window = make_window()
    QGuiApplication.clipboard().setMimeData(image_mime(50, 50, Qt.GlobalColor.blue))
    window.composer.edit.setFocus()
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    assert window.composer.images[0].image.getpixel((1, 1)) == (0, 0, 255)
    assert window.composer.text() == ""


def test_paste_file_urls_and_plain_text(qtbot, make_window, red_png, tmp_path):
    other = tmp_path / "other.jpg"
    Image.new("RGB", (30, 30), (0, 0, 0)).save(other)
    window = make_window()
    QGuiApplication.clipboard().setMimeData(file_mime(red_png, other))
    window.composer.edit.setFocus()
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(window.composer.images) == 2, timeout=WAIT_MS)
    QGuiApplication.clipboard().setText("just words")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.composer.text() == "just words" and len(window.composer.images) == 2


def test_ctrl_v_outside_the_text_box_still_attaches(qtbot, make_window):
    window = make_window()
    QGuiApplication.clipboard().setMimeData(image_mime())
    window.sidebar.list.setFocus()
    qtbot.keyClick(window.sidebar.list, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)


def test_remove_an_image_before_sending(qtbot, make_window, red_png):
    window = make_window()
    window.composer.add_paths([red_png, red_png])
    qtbot.waitUntil(lambda: len(window.composer.images) == 2, timeout=WAIT_MS)
    click(qtbot, window.composer._thumbs[0].remove_button)
    assert len(window.composer.images) == 1
    click(qtbot, window.composer._thumbs[0].remove_button)
    assert window.composer.images == [] and not window.composer.attachments.isVisible()
    assert not window.composer.send_button.isEnabled()  # nothing left to send


def test_bad_file_gets_an_inline_message_and_nothing_else_is_lost(qtbot, make_window, red_png, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture\n")
    window = make_window()
    window.composer.add_paths([red_png])
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    qtbot.keyClicks(window.composer.edit, "keep this text")
    drop(window, file_mime(notes))
    qtbot.waitUntil(lambda: window.composer.error.isVisible(), timeout=WAIT_MS)
    assert "notes.png" in window.composer.error.text() and "text file" in window.composer.error.text()
    assert window.composer.text() == "keep this text" and len(window.composer.images) == 1


def test_oversized_file_gets_an_inline_message(qtbot, make_window, tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.effect_noise((200, 200), 60).convert("RGB").save(big)
    monkeypatch.setattr(mmchat.images, "MAX_IMAGE_BYTES", 10_000)  # the real limit is 50 MB
    window = make_window()
    qtbot.keyClicks(window.composer.edit, "draft")
    drop(window, file_mime(big))
    qtbot.waitUntil(lambda: window.composer.error.isVisible(), timeout=WAIT_MS)
    assert "too large" in window.composer.error.text()
    assert window.composer.images == [] and window.composer.text() == "draft"


def test_send_waits_for_an_image_still_being_read(qtbot, make_window, red_png):
    window = make_window()
    window.composer.add_paths([red_png])
    qtbot.keyClicks(window.composer.edit, "now")
    if window.composer.loading:  # the check runs off the GUI thread; Enter meanwhile does not send
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
        assert not window.controller.busy and window.composer.text() == "now"
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)


def test_click_a_thumbnail_to_view_it_larger(qtbot, make_window, red_png):
    window = make_window()
    window.composer.add_paths([red_png])
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    type_and_send(qtbot, window, "look")
    wait_reply(qtbot, window)
    thumb = window.chat.messages()[0].thumbnails[0]
    click(qtbot, thumb)
    viewer = window._viewer
    assert isinstance(viewer, ImageViewer) and viewer.isVisible()
    assert viewer.label.pixmap().deviceIndependentSize().toSize().width() == 120
    qtbot.keyClick(viewer, Qt.Key.Key_Escape)
    assert not viewer.isVisible()


def test_images_survive_a_restart(qtbot, make_window, red_png):
    window = make_window()
    window.composer.add_paths([red_png])
    qtbot.waitUntil(lambda: len(window.composer.images) == 1, timeout=WAIT_MS)
    type_and_send(qtbot, window, "keep the picture")
    wait_reply(qtbot, window)
    conversation = window.controller.current.conversation_id
    window.close()
    again = make_window()
    again.sidebar.list.itemClicked.emit(again.sidebar.item_for(conversation))
    user = again.chat.messages()[0]
    assert len(user.thumbnails) == 1 and user.thumbnails[0].image.size().width() == 120
